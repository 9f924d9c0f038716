"""Tests for cat_trl.estimators: water-filling truncation, synthesis prompts, `SynthesisEstimator`, `MajorityEstimator`.

Parsing tests drive the estimator with a scripted `Engine` (the anchor's output must be controlled); truncation and
budget tests use the real `TransformersEngine` on the tiny model, so token counts are the real tokenizer's.
"""

from __future__ import annotations

import random
import re

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cat_trl.answers import AnswerMatcher
from cat_trl.engines import (
    TRUNCATION_MARK,
    Engine,
    Generation,
    SamplingSettings,
    TransformersEngine,
)
from cat_trl.estimators import (
    MATH_SYNTHESIS_PROMPT,
    Group,
    MajorityEstimator,
    SynthesisEstimator,
    build_synthesis_prompt,
    format_responses,
    unified_section,
    water_fill,
)
from cat_trl.estimators.prompts import validate_template


class ScriptedEngine(Engine):
    """Returns scripted anchor outputs (one per conversation, cycling) and records every call."""

    name = "scripted"

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.calls: list[tuple[list, SamplingSettings, dict | None]] = []

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        self.calls.append((conversations, sampling, chat_template_kwargs))
        if callable(self.outputs):
            return [Generation(self.outputs(c[-1]["content"])) for c in conversations]
        return [Generation(self.outputs[i % len(self.outputs)]) for i in range(len(conversations))]


SAMPLING = SamplingSettings(max_new_tokens=4, temperature=0.0)


# ---------------------------------------------------------------------------------------------------------------
# water_fill
# ---------------------------------------------------------------------------------------------------------------
def test_water_fill_returns_none_when_everything_fits():
    assert water_fill([10, 20, 30], 60) is None
    assert water_fill([10, 20, 30], 1000) is None
    assert water_fill([], 0) is None


def test_water_fill_known_values():
    # 10 fits in full, the two long ones share the remaining 90 equally.
    assert water_fill([10, 100, 100], 100) == 45
    # two short ones keep everything (5 + 7), the long one gets what is left
    assert water_fill([5, 500, 7], 100) == 88
    # nothing fits: equal shares, floored
    assert water_fill([50, 50, 50], 100) == 33
    assert water_fill([50, 50], 0) == 0


def _capped(lengths, cap):
    return sum(min(n, cap) for n in lengths)


def test_water_fill_cap_is_feasible_and_maximal_on_random_inputs():
    rng = random.Random(0)
    for _ in range(500):
        lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 16))]
        budget = rng.randint(0, sum(lengths) + 50)
        cap = water_fill(lengths, budget)
        if sum(lengths) <= budget:
            assert cap is None
            continue
        assert cap is not None and cap >= 0
        assert _capped(lengths, cap) <= budget, (lengths, budget, cap)
        assert _capped(lengths, cap + 1) > budget, (lengths, budget, cap)  # maximal
        # short rollouts are untouched: whatever is under the cap keeps all its tokens
        assert all(min(n, cap) == n for n in lengths if n <= cap)


# ---------------------------------------------------------------------------------------------------------------
# Synthesis prompts
# ---------------------------------------------------------------------------------------------------------------
QUESTION = "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in total?"
ROLLOUTS = [
    "48 / 2 = 24, 48 + 24 = 72. The answer is \\boxed{72}.",
    "She sold 48 + 24 clips. \\boxed{72}",
    "  I think it is \\boxed{96}.  ",
]


def test_build_synthesis_prompt_numbers_rollouts_and_is_question_blind():
    prompt = build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, ROLLOUTS, question=QUESTION)
    assert QUESTION not in prompt and "Natalia" not in prompt
    positions = [prompt.index(f"## Response {i}\n{r.strip()}") for i, r in enumerate(ROLLOUTS, start=1)]
    assert positions == sorted(positions)
    assert "## Response 4" not in prompt and "## Response 0" not in prompt
    assert "{responses}" not in prompt
    assert "# UNIFIED RESPONSE" in prompt and "# SUMMARY" in prompt
    assert format_responses(ROLLOUTS) in prompt


def test_build_synthesis_prompt_with_question():
    prompt = build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, ROLLOUTS, question=QUESTION, include_question=True)
    assert QUESTION in prompt
    assert prompt.index(QUESTION) < prompt.index("## Response 1")
    # a template with its own {question} placeholder gets it in place, once
    template = "Q: {question}\n---\n{responses}\n---"
    prompt = build_synthesis_prompt(template, ROLLOUTS[:1], question=QUESTION, include_question=True)
    assert prompt == f"Q: {QUESTION}\n---\n## Response 1\n{ROLLOUTS[0]}\n---"
    with pytest.raises(ValueError, match="no question"):
        build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, ROLLOUTS, question=None, include_question=True)


def test_templates_with_latex_braces_are_not_formatted():
    template = r"Responses: {responses}. Answer as $\boxed{answer}$ and use \frac{a}{b}; {0} and {} stay."
    validate_template(template, include_question=False)
    prompt = build_synthesis_prompt(template, ["\\boxed{\\frac{1}{2}}"])
    assert prompt == r"Responses: ## Response 1" "\n" r"\boxed{\frac{1}{2}}. Answer as $\boxed{answer}$ and use " \
        r"\frac{a}{b}; {0} and {} stay."


def test_template_validation_errors():
    with pytest.raises(ValueError, match=r"\{responses\}"):
        validate_template("Synthesize these.", include_question=False)
    with pytest.raises(ValueError, match=r"\{question\}.*question-blind|question-blind"):
        validate_template("{question}\n{responses}", include_question=False)
    validate_template("{question}\n{responses}", include_question=True)  # the ablation is allowed
    engine = ScriptedEngine(["x"])
    with pytest.raises(ValueError, match=r"\{responses\}"):
        SynthesisEstimator(engine, SAMPLING, template="no placeholder")
    with pytest.raises(ValueError, match="cat_include_question"):
        SynthesisEstimator(engine, SAMPLING, template="{question} {responses}")


def test_unified_section():
    out = "# SUMMARY\nThey agree on \\boxed{3}.\n# UNIFIED RESPONSE\nSo 2 + 3 = 5, \\boxed{5}."
    assert unified_section(out) == "So 2 + 3 = 5, \\boxed{5}."
    assert unified_section("# UNIFIED RESPONSE: \n\nBody") == "Body"
    # the last heading wins (the model restated it)
    assert unified_section("# UNIFIED RESPONSE\nfirst\n# UNIFIED RESPONSE\nsecond") == "second"
    assert unified_section("## UNIFIED RESPONSE\nbody") == "body"
    # no heading: the whole output
    assert unified_section("just an answer \\boxed{1}") == "just an answer \\boxed{1}"
    assert unified_section("") == ""


# ---------------------------------------------------------------------------------------------------------------
# SynthesisEstimator with a scripted anchor
# ---------------------------------------------------------------------------------------------------------------
def _groups(n, g=3):
    return [
        Group(prompt=f"problem {k}", completions=[f"group {k} rollout {j} \\boxed{{{k * 10 + j}}}" for j in range(g)],
              question=f"question number {k}?")
        for k in range(n)
    ]


def test_one_engine_call_for_all_groups_with_each_groups_rollouts():
    engine = ScriptedEngine(["# UNIFIED RESPONSE\n\\boxed{1}"])
    groups = _groups(4)
    refs = SynthesisEstimator(engine, SAMPLING, chat_template_kwargs={"enable_thinking": False}).estimate(groups)

    assert len(engine.calls) == 1
    conversations, sampling, kwargs = engine.calls[0]
    assert sampling is SAMPLING and kwargs == {"enable_thinking": False}
    assert len(conversations) == 4 and len(refs) == 4
    for k, conv in enumerate(conversations):
        assert [m["role"] for m in conv] == ["user"]
        text = conv[0]["content"]
        for j in range(3):
            assert f"## Response {j + 1}\ngroup {k} rollout {j} " in text
        assert all(f"group {other} " not in text for other in range(4) if other != k)
        assert f"question number {k}" not in text  # question-blind
        assert refs[k].diagnostics["anchor_prompt"] == text


def test_reference_answer_comes_from_the_unified_sections_last_box():
    outputs = [
        "# SUMMARY\nTwo say \\boxed{72}, one says \\boxed{96}.\n# UNIFIED RESPONSE\nFirst \\boxed{70}, corrected: "
        "Therefore, the final answer is: $\\boxed{72}$. I hope it is correct.",
        "# SUMMARY\nAll say \\boxed{5}.\n# UNIFIED RESPONSE\nThe answer is five.",  # box only in the summary
        "No headings at all, final \\boxed{\\frac{1}{2}}",
    ]
    engine = ScriptedEngine(outputs)
    refs = SynthesisEstimator(engine, SAMPLING).estimate(_groups(3))

    assert refs[0].answer == "72"
    assert refs[0].text.startswith("First \\boxed{70}") and "# SUMMARY" not in refs[0].text
    assert refs[0].diagnostics["parse_failed"] is False
    assert refs[0].diagnostics["anchor_output"] == outputs[0]

    assert refs[1].answer is None and refs[1].text == "The answer is five."
    assert refs[1].diagnostics["parse_failed"] is True

    assert refs[2].answer == "\\frac{1}{2}" and refs[2].text == outputs[2]
    for r in refs:
        assert r.diagnostics["truncated"] == 0  # ScriptedEngine has no context limit


@pytest.mark.parametrize(
    "output", ["", "# UNIFIED RESPONSE", "\\boxed{", "\\boxed{}", "}}}{{{", "# UNIFIED RESPONSE\n\\boxed", "\x00\ufffd"]
)
def test_malformed_anchor_outputs_never_raise(output):
    refs = SynthesisEstimator(ScriptedEngine([output]), SAMPLING).estimate(_groups(2))
    assert len(refs) == 2
    assert all(r.answer is None and r.diagnostics["parse_failed"] for r in refs)


def test_empty_and_malformed_groups():
    est = SynthesisEstimator(ScriptedEngine(["\\boxed{1}"]), SAMPLING)
    assert est.estimate([]) == []
    refs = est.estimate([Group(prompt="p", completions=["", "   ", "no box", "\\boxed{"])])
    assert refs[0].answer == "1"


def test_open_ended_estimator_has_no_answer_and_no_parse_failure():
    refs = SynthesisEstimator(ScriptedEngine(["# UNIFIED RESPONSE\nA poem."]), SAMPLING, extract_answer=None).estimate(
        _groups(1)
    )
    assert refs[0].text == "A poem." and refs[0].answer is None and refs[0].diagnostics["parse_failed"] is False


def test_include_question_shows_each_groups_own_question():
    engine = ScriptedEngine(["\\boxed{0}"])
    SynthesisEstimator(engine, SAMPLING, include_question=True).estimate(_groups(2))
    texts = [c[0]["content"] for c in engine.calls[0][0]]
    assert "question number 0?" in texts[0] and "question number 1?" not in texts[0]
    assert "question number 1?" in texts[1] and "question number 0?" not in texts[1]


# ---------------------------------------------------------------------------------------------------------------
# Truncation and budgets with the real tokenizer
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    return TransformersEngine(model, tokenizer)


LONG = " ".join(f"Step {i}: we add {i} and {i + 1} to get {2 * i + 1}." for i in range(60))


def _long_rollout(k):
    return f"Rollout {k} begins here. " + LONG + f" Therefore, the final answer is $\\boxed{{{k}}}$."


def _short_rollout(k):
    return f"Quick: the answer is \\boxed{{{k}}}."


def _chat_tokens(engine, text):
    return len(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     return_dict=True)["input_ids"])


CONTEXT = 700


def _rollouts_in(prompt):
    """The rollout bodies of a synthesis prompt built from MATH_SYNTHESIS_PROMPT."""
    block = prompt.split("\n\nHow to synthesize:")[0]
    return re.split(r"(?:\n\n)?## Response \d+\n", block)[1:]


def test_long_rollouts_are_truncated_evenly_and_counted(tiny_engine):
    completions = [_short_rollout(0), _long_rollout(1), _short_rollout(2), _long_rollout(3)]
    lengths = [tiny_engine.count_tokens(c) for c in completions]
    assert lengths[0] < 20 and lengths[2] < 20 and lengths[1] > CONTEXT and lengths[3] > CONTEXT

    est = SynthesisEstimator(tiny_engine, SAMPLING, max_context_tokens=CONTEXT)
    (ref,) = est.estimate([Group(prompt="p", completions=completions)])
    prompt = ref.diagnostics["anchor_prompt"]

    assert ref.diagnostics["truncated"] == 2
    assert prompt.count(TRUNCATION_MARK) == 2
    # short rollouts verbatim; long ones keep their head and their tail (the final answer)
    assert f"## Response 1\n{completions[0]}\n\n## Response 2\n" in prompt
    assert f"## Response 3\n{completions[2]}\n\n## Response 4\n" in prompt
    for k in (1, 3):
        assert f"Rollout {k} begins here." in prompt
        assert f"Therefore, the final answer is $\\boxed{{{k}}}$." in prompt
    shown = _rollouts_in(prompt)
    assert shown[0] == completions[0] and shown[2] == completions[2]
    # the two long rollouts got (about) equal shares, and all rollouts together fit the rollout budget
    n = [tiny_engine.count_tokens(r) for r in shown]
    assert abs(n[1] - n[3]) <= 3
    template = tiny_engine.count_tokens(build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, []))
    available = CONTEXT - template - SAMPLING.max_new_tokens  # for the rollouts, before any slack
    assert sum(n) <= available
    assert min(n[1], n[3]) >= 0.8 * (available - n[0] - n[2]) / 2  # ... without wasting it: about half each
    # the anchor prompt the engine reported is the real tokenised chat prompt
    assert ref.diagnostics["anchor_prompt_tokens"] == _chat_tokens(tiny_engine, prompt)
    assert ref.diagnostics["anchor_prompt_tokens"] < sum(lengths)


def test_nothing_truncated_when_everything_fits(tiny_engine):
    completions = [_short_rollout(k) for k in range(4)]
    (ref,) = SynthesisEstimator(tiny_engine, SAMPLING, max_context_tokens=CONTEXT).estimate(
        [Group(prompt="p", completions=completions)]
    )
    assert ref.diagnostics["truncated"] == 0 and TRUNCATION_MARK not in ref.diagnostics["anchor_prompt"]
    assert ref.diagnostics["anchor_prompt"] == build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, completions)


@pytest.mark.parametrize("num_rollouts", [4, 8])
def test_truncated_anchor_prompt_fits_the_context(tiny_engine, num_rollouts):
    context = 500 + 60 * num_rollouts
    est = SynthesisEstimator(tiny_engine, SAMPLING, max_context_tokens=context)
    (ref,) = est.estimate([Group(prompt="p", completions=[_long_rollout(k) for k in range(num_rollouts)])])
    assert ref.diagnostics["truncated"] == num_rollouts
    prompt_tokens = _chat_tokens(tiny_engine, ref.diagnostics["anchor_prompt"])
    assert prompt_tokens + SAMPLING.max_new_tokens <= context


def test_check_budget_reports_cap_or_raises(tiny_engine):
    template_tokens = tiny_engine.count_tokens(build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, []))
    est = SynthesisEstimator(tiny_engine, SamplingSettings(max_new_tokens=100), max_context_tokens=1000)
    available = 1000 - template_tokens - 100  # context minus the template and the anchor's output

    # 4 x 50 tokens fit: no cap
    fits = est.check_budget(4, 50)
    assert fits["per_rollout_cap"] is None
    assert available - 120 <= fits["budget"] <= available  # some slack for the chat template, not much more
    # 4 x 1000 do not: each rollout gets (a bit under) an equal share
    report = est.check_budget(4, 1000)
    budget, cap = report["budget"], report["per_rollout_cap"]
    assert budget == fits["budget"]
    marker = tiny_engine.count_tokens(TRUNCATION_MARK)  # a capped rollout also carries the marker
    assert 32 <= cap and 4 * (cap + marker) <= budget and cap >= budget // 4 - 16

    # A context that leaves under 32 tokens per rollout is refused with an actionable message.
    small = SynthesisEstimator(tiny_engine, SamplingSettings(max_new_tokens=100), max_context_tokens=400)
    with pytest.raises(ValueError) as err:
        small.check_budget(8, 512)
    msg = str(err.value)
    assert "400" in msg and "8 rollouts" in msg and "cat_anchor_max_new_tokens=100" in msg
    assert "cat_anchor_max_context" in msg

    # Without a known context window there is nothing to check.
    unlimited = SynthesisEstimator(ScriptedEngine(["x"]), SAMPLING)
    assert unlimited.check_budget(8, 10**6) == {"budget": None, "per_rollout_cap": None}


def test_max_context_defaults_to_the_engines(tiny_engine):
    assert SynthesisEstimator(tiny_engine, SAMPLING).max_context_tokens == 2048  # tiny model's max positions
    assert SynthesisEstimator(tiny_engine, SAMPLING, max_context_tokens=300).max_context_tokens == 300


# ---------------------------------------------------------------------------------------------------------------
# MajorityEstimator
# ---------------------------------------------------------------------------------------------------------------
def _g(*answers):
    return Group(prompt="p", completions=[("\\boxed{%s}" % a) if a is not None else "no answer" for a in answers])


def test_majority_known_groups():
    refs = MajorityEstimator().estimate([_g("3", "4", "4", "5"), _g("7", None, "7", "7"), _g("1", "2", "3", "1")])
    assert [r.answer for r in refs] == ["4", "7", "1"]
    assert [r.text for r in refs] == ["\\boxed{4}", "\\boxed{7}", "\\boxed{1}"]
    assert [r.diagnostics["majority_size"] for r in refs] == [2, 3, 2]
    assert [r.diagnostics["num_clusters"] for r in refs] == [3, 1, 3]
    assert all(r.diagnostics["parse_failed"] is False and r.diagnostics["truncated"] == 0 for r in refs)


def test_majority_string_mode_normalises_but_does_not_do_math():
    # "\dfrac12" and "\frac{1}{2}" normalise to the same string; 0.5 does not in string mode.
    (ref,) = MajorityEstimator().estimate([_g("0.5", "\\dfrac12", "\\frac{1}{2}", "0.5", "0.5")])
    assert ref.answer == "0.5" and ref.diagnostics["majority_size"] == 3
    (ref,) = MajorityEstimator().estimate([_g("0.5", "\\dfrac12", "\\frac{1}{2}", "7")])
    assert ref.answer == "\\dfrac12" and ref.diagnostics["majority_size"] == 2


def test_majority_equivalent_mode_clusters_equal_values():
    group = _g("\\frac{1}{2}", "3", "0.5", "3", "\\dfrac{1}{2}")
    (string_ref,) = MajorityEstimator(AnswerMatcher("string")).estimate([group])
    assert string_ref.answer == "\\frac{1}{2}" and string_ref.diagnostics["majority_size"] == 2  # tie 2-2, first wins
    (ref,) = MajorityEstimator(AnswerMatcher("equivalent")).estimate([group])
    assert ref.diagnostics["majority_size"] == 3 and ref.diagnostics["num_clusters"] == 2
    assert ref.answer == "\\frac{1}{2}"  # the cluster's first member represents it


def test_majority_tie_goes_to_first_occurrence():
    assert MajorityEstimator().estimate([_g("9", "2", "2", "9")])[0].answer == "9"
    assert MajorityEstimator().estimate([_g("2", "9", "9", "2")])[0].answer == "2"
    assert MajorityEstimator().estimate([_g(None, "5", "6")])[0].answer == "5"


def test_majority_uses_the_configured_extractor():
    from cat_trl.answers import extract_boxed_or_final

    group = Group(prompt="p", completions=["The final answer is 4.", "final answer is: $4$", "\\boxed{5}"])
    assert MajorityEstimator().estimate([group])[0].answer == "5"
    (ref,) = MajorityEstimator(extract=extract_boxed_or_final).estimate([group])
    assert ref.answer == "4" and ref.text == "\\boxed{4}" and ref.diagnostics["majority_size"] == 2


def test_majority_all_unparseable():
    (ref,) = MajorityEstimator().estimate([_g(None, None, None)])
    assert ref.text is None and ref.answer is None
    assert ref.diagnostics["parse_failed"] is True and ref.diagnostics["majority_size"] == 0
    assert MajorityEstimator().estimate([]) == []


def test_a_synthesis_without_the_unified_heading_is_counted_as_a_format_failure():
    engine = ScriptedEngine(["# SUMMARY\nthey agree\n# UNIFIED RESPONSE\nSo \\boxed{4}.", "It is \\boxed{5}."])
    refs = SynthesisEstimator(engine, SAMPLING).estimate(
        [Group(prompt="q", completions=["\\boxed{4}", "\\boxed{4}"]) for _ in range(2)])
    assert [r.diagnostics["format_failure"] for r in refs] == [False, True]
    assert refs[1].text == "It is \\boxed{5}." and refs[1].answer == "5"  # the documented fallback: whole output
    # a custom prompt that never asks for the heading has nothing to fail
    custom = SynthesisEstimator(ScriptedEngine(["\\boxed{5}"]), SAMPLING, template="Merge: {responses}")
    assert custom.estimate([Group(prompt="q", completions=["a", "b"])])[0].diagnostics["format_failure"] is False
