"""Tests for cat_trl.rewards: `CaTMathReward` (reference column) and `CaTSynthesisMathReward` (self-contained)."""

from __future__ import annotations

import importlib
import pickle
import re

import pytest

from cat_trl.engines import Engine, Generation
from cat_trl.estimators import MajorityEstimator, SynthesisEstimator
from cat_trl.rewards import CaTMathReward, CaTSynthesisMathReward


def conv(text):
    """A conversational TRL completion."""
    return [{"role": "assistant", "content": text}]


class ScriptedEngine(Engine):
    """Anchor double: answers each synthesis prompt with `respond(prompt_text)`, records what it was shown."""

    name = "scripted"

    def __init__(self, respond):
        super().__init__()
        self.respond = respond
        self.calls: list[list[str]] = []

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        self.calls.append([c[-1]["content"] for c in conversations])
        return [Generation(self.respond(c[-1]["content"])) for c in conversations]


# ---------------------------------------------------------------------------------------------------------------
# CaTMathReward
# ---------------------------------------------------------------------------------------------------------------
def test_math_reward_one_zero_none_with_string_and_conversational_completions():
    reward = CaTMathReward()
    ref_a = "Work... Therefore, the final answer is: $\\boxed{72}$. I hope it is correct."
    ref_b = "no final answer here"
    completions = [
        "so \\boxed{72}",  # match
        conv("hence $\\boxed{ 72 }$"),  # match (conversational, spaces)
        "\\boxed{71}",  # wrong
        conv("I don't know"),  # no answer -> 0
        "\\boxed{72}",  # group with an unparseable reference -> None
        conv("\\boxed{5}"),
    ]
    refs = [ref_a] * 4 + [ref_b] * 2
    assert reward(completions, cat_reference=refs) == [1.0, 1.0, 0.0, 0.0, None, None]


def test_reference_answer_is_the_last_box_and_completion_answer_is_its_last_box():
    reward = CaTMathReward()
    ref = "first \\boxed{3}, on reflection \\boxed{4}"
    assert reward(["\\boxed{4}", "\\boxed{3}", "\\boxed{3} no wait \\boxed{4}", "\\boxed{4} no wait \\boxed{3}"],
                  cat_reference=[ref] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_none_reference_gives_none():
    assert CaTMathReward()(["\\boxed{1}", "\\boxed{1}"], cat_reference=[None, "\\boxed{1}"]) == [None, 1.0]


def test_missing_reference_column_is_a_helpful_error():
    with pytest.raises(ValueError) as err:
        CaTMathReward()(["\\boxed{1}"], prompts=["p"])
    msg = str(err.value)
    assert "cat_reference" in msg and "CaTGRPOTrainer" in msg and "CaTSynthesisMathReward" in msg


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 completions but 2 references"):
        CaTMathReward()(["a", "b", "c"], cat_reference=["\\boxed{1}", "\\boxed{1}"])


def test_gold_like_columns_do_not_change_the_reward():
    reward = CaTMathReward()
    completions = ["\\boxed{72}", "\\boxed{96}", conv("\\boxed{72}")]
    refs = ["\\boxed{72}"] * 3
    clean = reward(completions, cat_reference=refs)
    leaked = reward(
        completions,
        cat_reference=refs,
        gold_answer=["96"] * 3,
        solution=["\\boxed{96}"] * 3,
        answer=["96"] * 3,
        ground_truth=["96"] * 3,
        prompts=["p"] * 3,
    )
    assert clean == leaked == [1.0, 0.0, 1.0]


def test_log_metric_receives_unparseable_fraction():
    logged = []
    CaTMathReward()(
        ["\\boxed{1}"] * 4 + ["\\boxed{2}"] * 4,
        cat_reference=["no box"] * 4 + ["\\boxed{2}"] * 4,
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert logged == [("cat/reward_unparseable_reference", 0.5)]
    logged.clear()
    CaTMathReward()(["\\boxed{1}"], cat_reference=["\\boxed{1}"], log_metric=lambda n, v: logged.append((n, v)))
    assert logged == [("cat/reward_unparseable_reference", 0.0)]


def test_equivalent_mode_accepts_equal_values_string_does_not():
    completions = ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.25}"]
    refs = ["\\boxed{\\frac12}"] * 3
    assert CaTMathReward("string")(completions, cat_reference=refs) == [0.0, 1.0, 0.0]
    assert CaTMathReward("equivalent")(completions, cat_reference=refs) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        CaTMathReward("fuzzy")


def test_boxed_or_final_extraction_falls_back_to_the_final_answer_phrase():
    completions = ["So the final answer is 10.", "The final answer is: $10$. I hope it is correct.", "\\boxed{11}",
                   "I give up."]
    refs = ["Therefore, the final answer is: $\\boxed{10}$. I hope it is correct."] * 4
    assert CaTMathReward(extraction="boxed")(completions, cat_reference=refs) == [0.0, 0.0, 0.0, 0.0]
    assert CaTMathReward(extraction="boxed_or_final")(completions, cat_reference=refs) == [1.0, 1.0, 0.0, 0.0]
    # an unboxed reference is usable too
    unboxed_ref = ["The final answer is 10."]
    assert CaTMathReward(extraction="boxed_or_final")(["\\boxed{10}"], cat_reference=unboxed_ref) == [1.0]
    with pytest.raises(ValueError, match="extraction"):
        CaTMathReward(extraction="last_line")


def test_boxed_or_final_does_not_turn_broken_boxes_into_answers():
    reward = CaTMathReward(extraction="boxed_or_final")
    ref_empty = "Therefore, the final answer is: $\\boxed{}$. I hope it is correct."
    assert reward(["The final answer is \\boxed{}"], cat_reference=[ref_empty]) == [None]
    ref = "Therefore, the final answer is: $\\boxed{12}$."
    broken = ["The final answer is \\boxed{", "the final answer is \\boxed{}"]
    assert reward(broken, cat_reference=[ref] * 2) == [0.0, 0.0]
    assert reward(["The final answer is \\boxed{12"], cat_reference=["The final answer is \\boxed{12"]) == [None]


def test_math_reward_pickles_and_has_a_name():
    reward = CaTMathReward("equivalent")
    assert reward.__name__ == "cat_math_reward"
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.__name__ == "cat_math_reward" and copy.matcher.mode == "equivalent"
    assert copy(["\\boxed{0.5}", "\\boxed{2}"], cat_reference=["\\boxed{\\frac12}"] * 2) == [1.0, 0.0]


def test_module_level_instances_and_trl_naming():
    from trl.trainer.utils import get_callable_name, is_async_callable

    module = importlib.import_module("cat_trl.rewards")  # what `trl grpo --reward_funcs a.b.c` does
    synth = getattr(module, "cat_synthesis_math_reward")
    math = getattr(module, "cat_math_reward")
    assert isinstance(synth, CaTSynthesisMathReward) and synth.from_env
    assert get_callable_name(synth) == "cat_synthesis_math_reward"
    assert get_callable_name(math) == "cat_math_reward"
    # It runs collectives, so TRL must call it synchronously on the main thread.
    assert not is_async_callable(synth) and not is_async_callable(math)


# ---------------------------------------------------------------------------------------------------------------
# CaTSynthesisMathReward: construction and environment configuration
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_generations": 1, "estimator": "majority"}, "num_generations"),
        ({"num_generations": 4.0, "estimator": "majority"}, "num_generations"),
        ({"num_generations": 4, "estimator": "vote"}, "estimator"),
        ({"num_generations": 4, "estimator": "synthesis"}, "anchor"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaTSynthesisMathReward(**kwargs)


def test_constructor_accepts_valid_settings_and_loads_nothing():
    majority = CaTSynthesisMathReward(4, estimator="majority")
    assert (majority.num_generations, majority.estimator_name, majority.engine) == (4, "majority", None)
    lazy = CaTSynthesisMathReward(4, anchor_model="/no/such/path")  # a missing path is fine: loaded on first call
    assert lazy.anchor_model == "/no/such/path" and lazy.engine is None
    engine = ScriptedEngine(lambda p: "")
    assert CaTSynthesisMathReward(2, engine=engine).engine is engine


_ENV = (*CaTSynthesisMathReward.ENV, "CAT_MATCH", "CAT_ANSWER_EXTRACTION")


@pytest.fixture
def clean_env(monkeypatch):
    for key in _ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_from_env_without_num_generations_outside_a_trainer_fails_clearly_when_called(clean_env):
    clean_env.setenv("CAT_ESTIMATOR", "majority")
    reward = CaTSynthesisMathReward(from_env=True)  # constructing is fine (module import must not fail)
    with pytest.raises(ValueError, match="CAT_NUM_GENERATIONS"):
        reward(["p", "p"], ["\\boxed{1}", "\\boxed{1}"])


def test_from_env_errors_name_the_environment_variables(clean_env):
    with pytest.raises(ValueError, match="CAT_ANCHOR_MODEL") as err:
        CaTSynthesisMathReward(from_env=True)(["p"] * 2, ["x"] * 2)
    assert "engine=" not in str(err.value) and "anchor_model=" not in str(err.value)
    clean_env.setenv("CAT_NUM_GENERATIONS", "two")
    with pytest.raises(ValueError, match="CAT_NUM_GENERATIONS='two'"):
        CaTSynthesisMathReward(from_env=True)(["p"] * 2, ["x"] * 2)


def test_from_env_builds_from_environment(clean_env):
    clean_env.setenv("CAT_NUM_GENERATIONS", "2")
    clean_env.setenv("CAT_ESTIMATOR", "majority")
    clean_env.setenv("CAT_MATCH", "equivalent")
    clean_env.setenv("CAT_ANCHOR_MAX_NEW_TOKENS", "77")
    clean_env.setenv("CAT_ANCHOR_TEMPERATURE", "0.3")
    reward = CaTSynthesisMathReward(from_env=True)
    out = reward(["p", "p", "q", "q"], ["\\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{3}", "\\boxed{4}"])
    assert reward.num_generations == 2 and reward.estimator_name == "majority"
    assert reward.reward.matcher.mode == "equivalent"
    assert reward._sampling(None).max_new_tokens == 77 and reward._sampling(None).temperature == 0.3
    assert isinstance(reward._estimator, MajorityEstimator)
    assert out == [1.0, 1.0, 1.0, 0.0]  # equivalent majority of group 1 covers both; group 2 tie -> "3"


def test_from_env_synthesis_requires_anchor_model(clean_env):
    clean_env.setenv("CAT_NUM_GENERATIONS", "4")
    with pytest.raises(ValueError, match="anchor"):
        CaTSynthesisMathReward(from_env=True)(["p"] * 4, ["x"] * 4)


# ---------------------------------------------------------------------------------------------------------------
# CaTSynthesisMathReward: behaviour
# ---------------------------------------------------------------------------------------------------------------
def test_majority_rewards_match_a_hand_computed_vote():
    G = 4
    groups = {
        "q1": ["\\boxed{3}", "\\boxed{4}", "\\boxed{4}", "no answer"],  # majority 4
        "q2": ["\\boxed{7}", "\\boxed{7}", "\\boxed{7}", "\\boxed{1}"],  # majority 7
        "q3": ["\\boxed{5}", "\\boxed{6}", "\\boxed{6}", "\\boxed{5}"],  # tie -> first occurrence, 5
        "q4": ["nothing", "still nothing", "", "?"],  # no answer at all -> None for the group
    }
    majority = {"q1": "4", "q2": "7", "q3": "5", "q4": None}
    prompts = [[{"role": "user", "content": q}] for q in groups for _ in range(G)]
    completions = [conv(c) for q in groups for c in groups[q]]

    logged_extra, logged_metric = {}, {}
    reward = CaTSynthesisMathReward(G, estimator="majority")
    out = reward(
        prompts,
        completions,
        log_extra=lambda name, values: logged_extra.__setitem__(name, values),
        log_metric=lambda name, value: logged_metric.__setitem__(name, value),
        gold_answer=["999"] * len(prompts),  # must be ignored
    )

    expected = []
    for q, comps in groups.items():
        for c in comps:
            if majority[q] is None:
                expected.append(None)
            else:
                expected.append(1.0 if c == "\\boxed{%s}" % majority[q] else 0.0)
    assert out == expected
    assert logged_extra["cat_reference_answer"] == [majority[q] for q in groups for _ in range(G)]
    assert logged_metric["cat/reward_unparseable_reference"] == 0.25


def test_prompts_not_laid_out_in_groups_are_refused():
    reward = CaTSynthesisMathReward(2, estimator="majority")
    with pytest.raises(RuntimeError, match="do not share one prompt"):
        reward(["a", "b", "a", "b"], ["\\boxed{1}"] * 4)
    with pytest.raises(RuntimeError, match="not a multiple"):
        reward(["a", "a", "a"], ["\\boxed{1}"] * 3)


def test_synthesis_reference_is_built_from_each_groups_own_rollouts():
    # The scripted anchor answers with the LAST rollout's answer it was shown, so each group's reference is
    # traceable to exactly the rollouts in that group's prompt.
    from cat_trl.answers import extract_boxed

    def respond(prompt_text):
        rollouts = re.findall(r"## Response \d+\n([^\n]*)", prompt_text)  # single-line rollouts in this test
        return f"# SUMMARY\nignored \\boxed{{0}}\n# UNIFIED RESPONSE\nHence $\\boxed{{{extract_boxed(rollouts[-1])}}}$."

    engine = ScriptedEngine(respond)
    G = 3
    questions = ["What is 1+1?", "What is 2+3?"]
    prompts = [[{"role": "user", "content": q}] for q in questions for _ in range(G)]
    completions = ["\\boxed{2}", "\\boxed{11}", "\\boxed{2}", "\\boxed{5}", "\\boxed{6}", "\\boxed{6}"]
    reward = CaTSynthesisMathReward(G, engine=engine)
    out = reward(prompts, [conv(c) for c in completions])

    assert len(engine.calls) == 1 and len(engine.calls[0]) == 2  # one call, one anchor prompt per group
    shown = engine.calls[0]
    for k in range(2):
        own = completions[k * G : (k + 1) * G]
        for j, c in enumerate(own, start=1):
            assert f"## Response {j}\n{c}" in shown[k]
        assert "## Response 4" not in shown[k]
        assert questions[k] not in shown[k]  # question-blind
    assert "\\boxed{11}" in shown[0] and "\\boxed{11}" not in shown[1]
    assert "\\boxed{5}" in shown[1] and "\\boxed{5}" not in shown[0]
    # references: group 1 -> "2" (its last rollout), group 2 -> "6"
    assert out == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert isinstance(reward._estimator, SynthesisEstimator)


def test_pickling_drops_the_engine_but_keeps_the_settings():
    engine = ScriptedEngine(lambda p: "\\boxed{1}")
    reward = CaTSynthesisMathReward(2, engine=engine, anchor_model="/path/of/pi0", match="equivalent")
    assert reward(["p", "p"], ["\\boxed{1}", "\\boxed{2}"]) == [1.0, 0.0]
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.engine is None and copy._estimator is None
    assert copy.anchor_model == "/path/of/pi0" and copy.num_generations == 2
    assert copy.reward.matcher.mode == "equivalent" and copy.__name__ == "cat_synthesis_math_reward"
    assert reward.engine is engine  # the original keeps its engine

    majority = pickle.loads(pickle.dumps(CaTSynthesisMathReward(2, estimator="majority")))
    assert majority(["p", "p"], ["\\boxed{1}", "\\boxed{2}"]) == [1.0, 0.0]


def test_unpickled_engine_only_reward_fails_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reward = CaTSynthesisMathReward(2, engine=ScriptedEngine(lambda p: "\\boxed{1}"))
    copy = pickle.loads(pickle.dumps(reward))
    with pytest.raises(ValueError, match="anchor"):
        copy(["p", "p"], ["\\boxed{1}", "\\boxed{2}"])


def test_final_phrase_extraction_is_linear_on_long_dot_runs():
    import time

    from cat_trl.answers import extract_final_phrase

    text = "The final answer is 7" + "." * 50_000 + "x"
    start = time.perf_counter()
    assert extract_final_phrase(text).startswith("7")
    assert time.perf_counter() - start < 1.0  # the old regex took minutes here
    assert extract_final_phrase("The final answer is: $12$. I hope it is correct.") == "12"
    assert extract_final_phrase("The final answer is 3.5. I hope it is correct. ...") == "3.5"
    assert extract_final_phrase("The final answer is ...") is None


class _Trainer:
    """What a reward sees of a TRL trainer: `log_metric` is its bound method (TRL 1.16)."""

    def __init__(self, g, **sampling):
        self.num_generations, self.num_generations_eval = g, None
        self.args = type("Args", (), {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "min_p": 0.05,
                                      "repetition_penalty": 1.1, **sampling})()
        self.metrics = []

    def _log_metric(self, name, value):
        self.metrics.append((name, value))


def test_g_comes_from_the_trainer_and_a_given_g_must_agree():
    trainer = _Trainer(2)
    reward = CaTSynthesisMathReward(estimator="majority")  # no G: read from the trainer
    assert reward(["p", "p", "q", "q"], ["\\boxed{1}", "\\boxed{1}", "\\boxed{2}", "\\boxed{3}"],
                  log_metric=trainer._log_metric) == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="num_generations=4 but the trainer uses num_generations=2"):
        CaTSynthesisMathReward(4, estimator="majority")(["p"] * 4, ["x"] * 4, log_metric=trainer._log_metric)


class SamplingRecorder(ScriptedEngine):
    def generate(self, conversations, sampling, chat_template_kwargs=None):
        self.sampling_seen = sampling
        return super().generate(conversations, sampling, chat_template_kwargs)


def test_anchor_samples_like_the_trainer_unless_set():
    engine = SamplingRecorder(lambda p: "\\boxed{1}")
    follows = CaTSynthesisMathReward(engine=engine)
    follows(["p", "p"], ["\\boxed{1}", "\\boxed{2}"], log_metric=_Trainer(2)._log_metric)
    s = engine.sampling_seen
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty) == (0.7, 0.9, 50, 0.05, 1.1)
    own = CaTSynthesisMathReward(engine=engine, anchor_temperature=0.0, anchor_top_p=0.5, anchor_top_k=3,
                                 anchor_min_p=0.0, anchor_seed=7, anchor_max_new_tokens=9)
    own(["p", "p"], ["\\boxed{1}", "\\boxed{2}"], log_metric=_Trainer(2)._log_metric)
    s = engine.sampling_seen
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed, s.max_new_tokens) == (0.0, 0.5, 3, 0.0, 7, 9)


@pytest.mark.parametrize("bad", [{"anchor_temperature": -1.0}, {"anchor_top_p": 0.0}, {"anchor_top_k": -2},
                                 {"anchor_max_new_tokens": 0}, {"anchor_min_p": 2.0}])
def test_anchor_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CaTSynthesisMathReward(2, anchor_model="/pi0", **bad)


def test_copies_keep_an_engine_anchor():
    import copy

    engine = ScriptedEngine(lambda p: "\\boxed{1}")
    reward = CaTSynthesisMathReward(2, engine=engine)
    for clone in (copy.copy(reward), copy.deepcopy(reward)):
        assert clone.engine is engine
        assert clone(["p", "p"], ["\\boxed{1}", "\\boxed{2}"]) == [1.0, 0.0]
    assert copy.deepcopy(reward).reward is not reward.reward


def test_include_question_needs_the_synthesis_estimator():
    with pytest.raises(ValueError, match="include_question.*synthesis"):
        CaTSynthesisMathReward(2, estimator="majority", include_question=True)
