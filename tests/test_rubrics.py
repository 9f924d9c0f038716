"""Rubric parsing, proposal, judging and the open-ended rewards, on real (tiny and embedded) models."""

from __future__ import annotations

import json

import pytest
import torch

from cat_trl.engines import SamplingSettings, TransformersEngine
from cat_trl.estimators import Group, Reference
from cat_trl.rewards import (
    CaTRubricReward,
    JudgeEquivalenceReward,
    PhysicianRubricReward,
)
from cat_trl.rubrics import (
    RUBRIC_PROMPT,
    Judge,
    JudgeItem,
    RubricEstimator,
    RubricProposer,
    parse_rubric,
    parse_yes_no,
)

FIVE = "".join(f"<criterion>Criterion number {i}.</criterion>" for i in range(1, 6))


# ------------------------------------------------------------------------------------------------ parsing


def test_rubric_xml_with_stray_text():
    text = f"Sure! Here is the rubric:\n<rubric>\n{FIVE}\n</rubric>\nHope this helps."
    parsed = parse_rubric(text)
    assert parsed.ok and parsed.criteria == [f"Criterion number {i}." for i in range(1, 6)]


def test_rubric_without_root_unclosed_last_and_bare_ampersand():
    text = (
        "<criterion>Suggests diet & exercise.</criterion>\n<criterion>Recommends a doctor.</criterion>"
        "<criterion>Avoids a diagnosis.</criterion><criterion>Is empathetic.</criterion>"
        "<criterion>Acknowledges the symptoms"
    )
    parsed = parse_rubric(text)
    assert parsed.ok
    assert parsed.criteria[0] == "Suggests diet & exercise."
    assert parsed.criteria[-1] == "Acknowledges the symptoms"


def test_rubric_xml_entities_and_nested_markup():
    text = "<rubric>" + "".join(f"<criterion>Uses &lt;b&gt; <b>bold</b> {i}</criterion>" for i in range(5)) + "</rubric>"
    parsed = parse_rubric(text)
    assert parsed.ok and parsed.criteria[0] == "Uses <b> bold 0"


def test_rubric_duplicates_dropped_and_too_few_fails():
    text = "<rubric>" + "<criterion>Same thing.</criterion><criterion>same   THING</criterion>" * 3 + "</rubric>"
    parsed = parse_rubric(text)
    assert not parsed.ok and parsed.criteria == ["Same thing."] and parsed.dropped_duplicates == 5
    assert "fewer than 5" in parsed.error


def test_rubric_max_criteria_and_min_setting():
    text = "<rubric>" + "".join(f"<criterion>c{i}</criterion>" for i in range(20)) + "</rubric>"
    assert parse_rubric(text, max_criteria=12).criteria == [f"c{i}" for i in range(12)]
    assert parse_rubric("<criterion>a</criterion><criterion>b</criterion>", min_criteria=2).ok


def test_rubric_list_fallback_only_when_allowed():
    text = "Rubric:\n1. Mentions rest.\n2. Mentions water.\n- Mentions a doctor.\n* Is kind.\n3) Is short."
    assert not parse_rubric(text).ok
    parsed = parse_rubric(text, allow_list=True)
    assert parsed.ok and parsed.criteria == ["Mentions rest.", "Mentions water.", "Mentions a doctor.", "Is kind.", "Is short."]


@pytest.mark.parametrize("bad", [None, "", "   ", "no tags at all", 42])
def test_rubric_garbage_never_raises(bad):
    assert not parse_rubric(bad).ok


@pytest.mark.parametrize(
    "text,expected",
    [("Yes", True), ("no.", False), (" <answer>YES</answer>", True), ("I think no, because", False),
     ("Nope", None), ("", None), (None, None), ("yesterday", None), ("The answer: yes", True)],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


# ------------------------------------------------------------------------------------------------ proposal


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path):
    return TransformersEngine.from_pretrained(tiny_model_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def embedded_engine(embedded_model_path):
    return TransformersEngine.from_pretrained(embedded_model_path, dtype=torch.float32)


def test_proposer_prompt_is_conversation_blind_by_default(tiny_engine):
    proposer = RubricProposer(tiny_engine, SamplingSettings(max_new_tokens=4))
    conversation = [{"role": "user", "content": "SECRET QUESTION"}]
    assert "SECRET QUESTION" not in proposer.prompt("the reference", conversation)
    assert "the reference" in proposer.prompt("the reference", conversation)
    seeing = RubricProposer(tiny_engine, SamplingSettings(max_new_tokens=4), include_conversation=True)
    assert "user: SECRET QUESTION" in seeing.prompt("the reference", conversation)
    with pytest.raises(ValueError, match="reference"):
        RubricProposer(tiny_engine, SamplingSettings(), template="no placeholder")


def test_proposer_counts_failures_and_skips_empty_references(tiny_engine):
    proposer = RubricProposer(tiny_engine, SamplingSettings(max_new_tokens=8, temperature=0))
    refs = [Reference(text="Drink water and rest."), Reference(text=None), Reference(text="  ")]
    groups = [Group(prompt="q", completions=["a", "b"]) for _ in refs]
    before = tiny_engine.stats.sequences
    proposer.propose(refs, groups)
    assert tiny_engine.stats.sequences - before == 1  # only the reference with text went to the anchor
    assert all(r.rubric is None and r.diagnostics["rubric_failed"] for r in refs)  # random weights: no XML
    assert refs[0].diagnostics["rubric_output"] is not None
    assert refs[1].diagnostics["rubric_error"] == "no reference text"


def test_rubric_estimator_wraps_synthesis_and_keeps_its_interface(tiny_engine):
    from cat_trl.estimators import SynthesisEstimator
    from cat_trl.rubrics import FREEFORM_SYNTHESIS_PROMPT

    synthesis = SynthesisEstimator(tiny_engine, SamplingSettings(max_new_tokens=8), template=FREEFORM_SYNTHESIS_PROMPT,
                                   extract_answer=None)
    estimator = RubricEstimator(synthesis, RubricProposer(tiny_engine, SamplingSettings(max_new_tokens=8)))
    estimator.sampling = SamplingSettings(max_new_tokens=8, seed=5)  # the trainer re-seeds per step
    assert synthesis.sampling.seed == 5 and estimator.proposer.sampling.seed == 6
    assert estimator.check_budget(4, 16)["budget"] is not None
    (ref,) = estimator.estimate([Group(prompt="q", completions=["one", "two"])])
    assert "rubric_failed" in ref.diagnostics and ref.answer is None


# ------------------------------------------------------------------------------------------------ judging

ITEMS = [
    JudgeItem([{"role": "user", "content": "My blood pressure is 142/91."}], "See a doctor and cut salt.", c)
    for c in ("Recommends seeing a doctor.", "Suggests less salt.", "Mentions the weather.", "Is written in French.")
]


def test_logprob_judge_batched_equals_one_by_one(embedded_engine):
    """Left padding and position ids must not change the verdicts: each pair alone vs. all pairs in one batch."""
    judge = Judge(embedded_engine, "logprob")
    calls = embedded_engine.stats.calls
    batched = judge.judge(ITEMS)
    assert embedded_engine.stats.calls == calls + 1  # one engine call for all pairs
    for item, verdict in zip(ITEMS, batched):
        (alone,) = judge.judge([item])
        assert alone.score == pytest.approx(verdict.score, abs=1e-4)
        assert 0.0 < verdict.score < 1.0 and verdict.met == (verdict.score > 0.5)


def test_logprob_judge_prefers_yes_when_the_prompt_demands_it(embedded_engine):
    judge = Judge(embedded_engine, "logprob", template="{response}\n{criterion}")
    yes, no = judge.judge([
        JudgeItem(None, "Reply with the single word yes.", "Reply now: yes"),
        JudgeItem(None, "Reply with the single word no.", "Reply now: no"),
    ])
    assert yes.score > no.score


def test_generate_judge_parses_and_counts_failures(embedded_engine):
    verdicts = Judge(embedded_engine, "generate", max_new_tokens=4).judge(ITEMS)
    assert len(verdicts) == 4
    for v in verdicts:
        assert v.raw is not None
        assert v.parsed == (parse_yes_no(v.raw) is not None)
        assert v.met == bool(parse_yes_no(v.raw))


def test_judge_prompt_puts_the_shared_prefix_first(embedded_engine):
    judge = Judge(embedded_engine, "generate")
    a, b = (judge.prompt(ITEMS[0]), judge.prompt(ITEMS[1]))
    prefix = a[: a.index("Recommends seeing a doctor.")]
    assert b.startswith(prefix) and "See a doctor and cut salt." in prefix


# ------------------------------------------------------------------------------------------------ rewards


def test_rubric_reward_is_fraction_of_judged_criteria(embedded_engine):
    judge = Judge(embedded_engine, "logprob")
    reward = CaTRubricReward(judge, scale=2.0)
    prompts = [ITEMS[0].conversation] * 3
    completions = [[{"role": "assistant", "content": "See a doctor and cut salt."}],
                   [{"role": "assistant", "content": "Relax."}],
                   [{"role": "assistant", "content": "Anything."}]]
    rubric = [c.criterion for c in ITEMS]
    logged = {}
    calls = embedded_engine.stats.calls
    out = reward(prompts, completions, cat_rubric=[rubric, rubric, None],
                 log_metric=lambda k, v: logged.__setitem__(k, v))
    assert embedded_engine.stats.calls == calls + 1  # every (rollout, criterion) pair in ONE judge call
    assert out[2] is None  # no rubric: unscorable, not zero
    for i in range(2):
        verdicts = judge.judge([JudgeItem(prompts[i], completions[i][0]["content"], c) for c in rubric])
        assert out[i] == pytest.approx(2.0 * sum(v.met for v in verdicts) / 4)
    assert logged["cat/judge_calls"] == 8


def test_length_penalty_fires_without_judging(embedded_engine):
    reward = CaTRubricReward(Judge(embedded_engine, "logprob"), length_penalty_tokens=3, length_penalty=-1.0)
    logged = {}
    calls = embedded_engine.stats.calls
    out = reward(["q", "q"], ["short", "a very long answer"], cat_rubric=[["Is short."]] * 2,
                 completion_ids=[[1, 2], [1, 2, 3, 4]], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out[1] == -1.0 and out[0] in (0.0, 1.0)
    assert logged["cat/length_penalty_rate"] == 0.5 and logged["cat/judge_calls"] == 1
    assert embedded_engine.stats.calls == calls + 1


def test_rubric_reward_requires_the_rubric_column(embedded_engine):
    with pytest.raises(ValueError, match="cat_rubric"):
        CaTRubricReward(Judge(embedded_engine))(["q"], ["a"])


def test_equivalence_and_physician_baselines(embedded_engine):
    from cat_trl.rubrics.healthbench_grader import RubricItem, example_score

    eq = JudgeEquivalenceReward.from_engine(embedded_engine, "logprob")
    out = eq(["q", "q"], ["Rest and drink water.", "x"], cat_reference=["Rest and drink water.", None])
    assert out[0] in (0.0, 1.0) and out[1] is None

    judge = Judge(embedded_engine, "logprob")
    rubric = [{"criterion": "Recommends a doctor.", "points": 6, "tags": []},
              {"criterion": "Gives a diagnosis.", "points": -4, "tags": []},
              {"criterion": "Mentions salt.", "points": 2, "tags": []}]
    physician = PhysicianRubricReward(judge)
    (score,) = physician(["q"], ["See a doctor."], gold_rubrics=[json.dumps(rubric)])
    verdicts = judge.judge([JudgeItem([{"role": "user", "content": "q"}], "See a doctor.", r["criterion"])
                            for r in rubric])
    assert score == pytest.approx(example_score([RubricItem.from_dict(r) for r in rubric], [v.met for v in verdicts]))
    with pytest.raises(ValueError, match="gold_rubrics"):
        physician(["q"], ["a"])


def test_rewards_pickle(embedded_engine):
    import pickle

    from cat_trl.engines.openai_engine import OpenAIEngine

    reward = CaTRubricReward(Judge(OpenAIEngine("http://127.0.0.1:9/v1", "judge-model")))
    clone = pickle.loads(pickle.dumps(reward))
    assert clone.__name__ == "cat_rubric_reward" and clone.judge.model_name == "judge-model"
    assert RUBRIC_PROMPT.count("{reference}") == 1


def test_rubric_parsing_is_script_agnostic_and_keeps_comparisons():
    russian = "".join(f"<criterion>{c}</criterion>" for c in
                      ("Советует отдых.", "Рекомендует пить воду.", "Советует врача.", "Вежливый тон.", "Без диагноза."))
    parsed = parse_rubric(russian)
    assert parsed.ok and len(parsed.criteria) == 5
    assert not parse_rubric("<criterion>Советует 2 раза</criterion>" * 2 + russian).dropped_duplicates == 0
    odd = "<criterion>Says dose < 5 mg and > 1 mg & more</criterion>" + FIVE  # not well-formed XML: regex path
    assert parse_rubric(odd).criteria[0] == "Says dose < 5 mg and > 1 mg & more"


def test_logprob_judge_without_yes_or_no_mass_is_unparsed(embedded_engine):
    judge = Judge(embedded_engine, "logprob", template="{response}{criterion}", min_mass=0.99)
    (verdict,) = judge.judge([JudgeItem(None, "Write a long poem about the sea.", "")])
    assert not verdict.parsed and not verdict.met and verdict.score == 0.0


@pytest.mark.parametrize("junk", [
    "<rubric>" * 50_000,                     # repeated unclosed roots: the old regex rescanned to the end each time
    "<rubric " * 50_000,
    "<rubric>" + "<criterion>x" * 20_000,
    "- " + " " * 200_000 + "x",              # a list line of whitespace: the old list regex was quadratic
    "1. " + "a " * 100_000,
    "<criterion>" * 50_000,
])
def test_rubric_parser_is_linear_on_hostile_output(junk):
    import time

    from cat_trl.rubrics.parse import parse_rubric

    start = time.perf_counter()
    parse_rubric(junk, 5, 12, allow_list=True)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text", ["<rubric><criterion>\ud800 lone surrogate</criterion></rubric>",
                                  "\udcff" * 10, "<rubric>\x00<criterion>a&b</criterion></rubric>"])
def test_malformed_rubric_output_never_raises(text):
    from cat_trl.engines import Generation
    from cat_trl.estimators import Reference
    from cat_trl.rubrics import RubricProposer
    from cat_trl.rubrics.parse import parse_rubric

    parsed = parse_rubric(text, 1, 12, allow_list=True)

    class Echo:
        collective = False

        def generate(self, conversations, sampling, chat_template_kwargs=None):
            return [Generation(text) for _ in conversations]

    from cat_trl.engines import SamplingSettings
    from cat_trl.estimators import Group

    refs = [Reference(text="a reference")]
    RubricProposer(Echo(), SamplingSettings(max_new_tokens=8), min_criteria=1).propose(refs, [Group("q", ["a", "b"])])
    # decided, not raised: a failed rubric exactly when the parser found no criterion in the output
    assert refs[0].diagnostics["rubric_failed"] is (not parsed.criteria)
    assert (refs[0].rubric is None) is (not parsed.criteria)


def test_rubric_block_search_matches_the_regex_it_replaced():
    import re

    from cat_trl.rubrics.parse import _rubric_block

    regex = re.compile(r"<rubric\b[^>]*>.*?</rubric>", re.DOTALL | re.IGNORECASE)
    for text in ["x <rubric><criterion>a</criterion></rubric> y", "<RUBRIC id='1'>a</Rubric>", "<rubrics>a</rubric>",
                 "<rubrics><rubric>b</rubric>", "<rubric>open", "no rubric", "<rubric a>x</rubric><rubric>y</rubric>",
                 "<rubric", "<rubric></rubric>"]:
        found = regex.search(text)
        assert _rubric_block(text) == (found.group(0) if found else None), text
