"""HealthBench: loader on fixtures in the official schema, simple-evals scoring semantics, and the grader end to end
(a rule-based grader engine where exact numbers must be known, the real served model where the plumbing is
tested)."""

from __future__ import annotations

import importlib.util

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cat_trl.data import load_healthbench, resolve_format
from cat_trl.data.healthbench import read_healthbench, split_healthbench
from cat_trl.engines import Engine, Generation
from cat_trl.rubrics.healthbench_grader import (
    HealthBenchGrader,
    RubricItem,
    aggregate,
    bootstrap_std,
    example_metrics,
    example_score,
    format_score,
    parse_grader_output,
)

FIXTURE = Path(__file__).parent / "fixtures" / "healthbench_sample.jsonl"


def _write(tmp_path, records) -> str:
    path = tmp_path / "hb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _records():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ loading


def test_loader_keeps_multi_turn_and_hides_rubrics_in_gold_column():
    train = load_healthbench(str(FIXTURE), "train", holdout=2, seed=0)
    evaluation = load_healthbench(str(FIXTURE), "eval", holdout=2, seed=0)
    assert len(train) == 4 and len(evaluation) == 2
    assert set(train["problem_id"]).isdisjoint(evaluation["problem_id"])
    rows = {r["problem_id"]: r for r in list(train) + list(evaluation)}
    multi = rows["hb-fixture-002"]
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user"]  # not flattened
    assert multi["question"] == "He is drinking but sleepy. What should I do?"
    assert json.loads(multi["gold_rubrics"])[2]["points"] == -10
    assert rows["hb-fixture-003"]["prompt"][0]["role"] == "system"
    assert set(train.column_names) == {"prompt", "question", "problem_id", "example_tags", "gold_rubrics"}


def test_holdout_is_seeded_and_independent_of_file_order():
    records = _records()
    a = [r["prompt_id"] for r in split_healthbench(records, 3, seed=1)[1]]
    b = [r["prompt_id"] for r in split_healthbench(list(reversed(records)), 3, seed=1)[1]]
    assert a == b and len(set(a)) == 3
    with pytest.raises(ValueError, match="no training examples"):
        split_healthbench(records, 6)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r.update(prompt="flat string"), "list of chat messages"),
        (lambda r: r["prompt"].append({"role": "assistant", "content": "x"}), "end with a user turn"),
        (lambda r: r["rubrics"][0].update(points="7"), "points must be a number"),
        (lambda r: r.update(rubrics=[{"criterion": "bad only", "points": -3, "tags": []}]), "positive points"),
        (lambda r: r.pop("prompt_id"), "prompt_id"),
        (lambda r: r["prompt"][0].update(role="robot"), "prompt\\[0\\]"),
    ],
)
def test_schema_errors_name_the_line_and_field(tmp_path, mutate, message):
    records = _records()
    mutate(records[2])
    path = _write(tmp_path, records)
    with pytest.raises(ValueError, match=f"hb.jsonl:3: .*{message}"):
        read_healthbench(path)


def test_format_is_detected_and_offline_hub_fails_clearly(tmp_path):
    assert resolve_format(str(FIXTURE)) == "healthbench"
    assert resolve_format("openai/healthbench") == "healthbench"
    with pytest.raises(FileNotFoundError, match="openai/healthbench"):
        read_healthbench("openai/healthbench")  # HF_HUB_OFFLINE=1 in tests


def test_train_entry_point_loads_healthbench(tmp_path):
    from cat_trl.data import load_train_dataset
    from cat_trl.config.script_args import CaTScriptArguments

    args = CaTScriptArguments(dataset_name=str(FIXTURE), healthbench_holdout=1)
    assert len(load_train_dataset(args)) == 5


# ------------------------------------------------------------------------------------------------ scoring


def test_example_score_matches_simple_evals_definition():
    items = [RubricItem("a", 7), RubricItem("b", 5), RubricItem("c", 8), RubricItem("bad", -6)]
    assert example_score(items, [True, True, True, False]) == 1.0
    assert example_score(items, [True, False, False, True]) == pytest.approx((7 - 6) / 20)
    assert example_score(items, [False, False, False, True]) == pytest.approx(-6 / 20)  # not clipped per example
    assert example_score([RubricItem("bad", -1)], [True]) is None


def test_tags_and_clipped_aggregate():
    items = [RubricItem("a", 6, ["axis:accuracy"]), RubricItem("b", 4, ["axis:completeness"]),
             RubricItem("c", -10, ["axis:accuracy"])]
    m1 = example_metrics(items, [True, False, True], ["theme:x"])
    assert m1["overall_score"] == pytest.approx(-0.4) and m1["theme:x"] == m1["overall_score"]
    assert m1["axis:accuracy"] == pytest.approx(-4 / 6) and m1["axis:completeness"] == 0.0
    m2 = example_metrics(items, [True, True, False], ["theme:y"])
    assert m2["overall_score"] == 1.0
    only_negative = example_metrics([RubricItem("a", 1), RubricItem("n", -2, ["axis:safety"])], [True, True], [])
    assert "axis:safety" not in only_negative  # a tag needs a positive-points item
    summary = aggregate([m1, m2, only_negative])
    assert summary["overall_score"]["mean"] == pytest.approx(np.clip(np.mean([-0.4, 1.0, -1.0]), 0, 1))
    assert summary["overall_score"]["n"] == 3 and summary["theme:x"]["n"] == 1
    assert aggregate([m1])["overall_score"]["mean"] == 0.0  # mean clipped to [0, 1]


def test_bootstrap_std_is_seeded_and_sane():
    values = [0.1, 0.9, 0.5, 0.4, 0.7]
    assert bootstrap_std(values, seed=3) == bootstrap_std(values, seed=3)
    assert 0 < bootstrap_std(values) < 0.5
    assert bootstrap_std([0.5] * 10) == 0.0


@pytest.mark.parametrize(
    "text,met",
    [('```json\n{"explanation": "ok", "criteria_met": true}\n```', True),
     ('{"explanation": "no", "criteria_met": false}', False),
     ('Sure: {"criteria_met": true, "explanation": "x"} done', True),
     ('{"criteria_met": "true"}', None), ("not json", None), (None, None)],
)
def test_grader_output_parsing(text, met):
    data = parse_grader_output(text)
    assert (None if data is None else data["criteria_met"]) is met


class KeywordGrader(Engine):
    """A deterministic grader: criteria_met iff the rubric item's first keyword (in brackets' criterion) appears in
    the graded response. The first answer for every request is malformed JSON, to exercise re-asking."""

    name = "keyword-grader"

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        outs = []
        for conv in conversations:
            prompt = conv[-1]["content"]
            assert conv[0] == {"role": "system", "content": "You are a helpful assistant."}
            key = prompt
            if key not in self.seen:
                self.seen.add(key)
                outs.append(Generation("I think it is met"))
                continue
            item = re.search(r"# Rubric item\n\[(-?[\d.]+)\] (\S+)", prompt)
            response = prompt.split("assistant: ")[-1].split("\n\n# Rubric item")[0]
            met = item.group(2).lower() in response.lower()
            outs.append(Generation(f'```json\n{{"explanation": "x", "criteria_met": {str(met).lower()}}}\n```'))
        return outs


def test_grader_scores_exactly_and_reasks_malformed_answers():
    records = _records()[:2]
    responses = ["Recommends re-measuring at home; suggests less salt. States it is certainly hypertension.",
                 "Lists warning signs. Recommends aspirin."]
    result = HealthBenchGrader(KeywordGrader(), bootstrap_samples=50).grade(records, responses)
    # Record 1: "Recommends"(7) met, "Suggests"(5) met, "Recommends"(8) met, "States"(-6) met -> 14/20.
    # Record 2: "Lists"(9) met, "Advises"(5) not, "Recommends"(-10) met -> -1/14 (kept unclipped per example).
    scores = [e["metrics"]["overall_score"] for e in result["examples"]]
    assert scores == pytest.approx([14 / 20, -1 / 14])
    assert result["score"] == pytest.approx(max(0.0, (14 / 20 - 1 / 14) / 2))
    assert result["grading_failures"] == 0  # the malformed first answers were re-asked
    assert result["grader_model"] == "keyword-grader" and "grader: keyword-grader" in format_score(result)
    assert result["metrics"]["theme:context_seeking"]["n"] == 1
    assert result["metrics"]["axis:accuracy"]["n"] == 2


def test_grader_against_a_real_server_counts_unparseable_items(served_model):
    from cat_trl.engines import SamplingSettings
    from cat_trl.engines.openai_engine import OpenAIEngine

    base_url, model = served_model
    grader = HealthBenchGrader(OpenAIEngine(base_url, model, max_concurrency=4),
                               sampling=SamplingSettings(max_new_tokens=48, temperature=0.0), max_attempts=2,
                               bootstrap_samples=20)
    records = _records()[3:5]
    result = grader.grade(records, ["About 60 to 100 beats per minute.", "Press on it with a clean cloth."])
    assert result["grader_model"] == model
    items = [i for e in result["examples"] for i in e["items"]]
    assert len(items) == 4
    assert result["grading_failures"] == sum(i["failed"] for i in items)
    for e in result["examples"]:  # whatever the 135M grader said, the scores follow from its verdicts
        rubric = [RubricItem.from_dict(i) for i in e["items"]]
        assert e["metrics"]["overall_score"] == pytest.approx(example_score(rubric, [i["criteria_met"] for i in e["items"]]))


def test_healthbench_eval_command_end_to_end(tmp_path, served_model, embedded_model_path, capsys):
    """Policy = the embedded model (local), grader = the same model behind a real OpenAI-compatible server."""
    from cat_trl.cli import main

    base_url, model = served_model
    out = tmp_path / "hb.json"
    rc = main(["healthbench-eval", "--data", str(FIXTURE), "--holdout", "2", "--policy", embedded_model_path,
               "--policy-max-new-tokens", "24", "--grader-base-url", base_url, "--grader-model", model,
               "--grader-max-attempts", "1", "--grader-max-new-tokens", "40", "--bootstrap-samples", "20",
               "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"grader: {model}" in printed
    result = json.loads(out.read_text())
    assert result["n_examples"] == 2 and result["grader_model"] == model
    assert all(e["response"] for e in result["examples"])
    # `engine: auto` without vLLM installed: the policy was decoded in-process by transformers, and the file says so
    assert result["policy_engine"]["kind"] == ("vllm" if importlib.util.find_spec("vllm") else "transformers")
    assert 0.0 <= result["score"] <= 1.0


def test_healthbench_eval_bad_input_fails_before_loading_models(tmp_path, capsys):
    from cat_trl.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    rc = main(["healthbench-eval", "--data", str(bad), "--policy", "/nonexistent", "--grader-base-url",
               "http://127.0.0.1:9/v1", "--grader-model", "g"])
    assert rc == 2 and "bad.jsonl:1" in capsys.readouterr().err


def test_healthbench_eval_unreachable_grader_fails_first(tmp_path, capsys):
    from cat_trl.cli import main

    rc = main(["healthbench-eval", "--data", str(FIXTURE), "--holdout", "2", "--policy", "/never/loaded",
               "--grader-base-url", "http://127.0.0.1:9/v1", "--grader-model", "g"])
    assert rc == 2 and "127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize("extra,words", [
    (["--engine", "sglang"], ["engine", "sglang"]),
    (["--engine", "transformers", "--vllm-llm-kwargs", "{enforce_eager: true}"], ["vllm_llm_kwargs"]),
    (["--responses", "r.jsonl", "--vllm-llm-kwargs", "{enforce_eager: true}"], ["vllm_llm_kwargs"]),
    *([(["--engine", "vllm"], ["engine: vllm", "not installed"])]
      if importlib.util.find_spec("vllm") is None else []),
])
def test_healthbench_eval_engine_settings_are_checked_before_any_model_loads(extra, words, capsys):
    from cat_trl.cli import main

    policy = [] if "--responses" in extra else ["--policy", "/never/loaded"]
    rc = main(["healthbench-eval", "--data", str(FIXTURE), "--holdout", "2", *policy, *extra,
               "--grader-base-url", "http://127.0.0.1:9/v1", "--grader-model", "g"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)


def test_holdout_from_training_file_and_thinking_stripped(tmp_path):
    from cat_trl.cli.healthbench_eval import _examples, parse_args
    from cat_trl.messages import strip_thinking as _strip_thinking

    subset = tmp_path / "hard.jsonl"
    subset.write_text("".join(line + "\n" for line in FIXTURE.read_text().splitlines()[:3]))
    args = parse_args(["--data", str(subset), "--holdout-from", str(FIXTURE), "--holdout", "2",
                       "--responses", "x", "--grader-base-url", "u", "--grader-model", "g"])
    held = {r["prompt_id"] for r in split_healthbench(_records(), 2, seed=0)[1]}
    assert {e["prompt_id"] for e in _examples(args)} == held & {r["prompt_id"] for r in _records()[:3]}
    assert _strip_thinking("<think>hmm\nlong</think>\nSee a doctor.") == "See a doctor."
    assert _strip_thinking("<think>never closed") == ""


@pytest.mark.parametrize("junk", ["{" * 200_000, " " * 200_000 + "x", "```" + " " * 200_000, "[" * 200_000,
                                  '{"criteria_met": ' * 50_000])
def test_grader_output_parser_is_linear_on_hostile_output(junk):
    import time

    from cat_trl.rubrics.healthbench_grader import parse_grader_output

    start = time.perf_counter()
    assert parse_grader_output(junk) is None
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("reply,met", [
    ('```json\n{"criteria_met": true, "explanation": "ok"}\n```', True),  # simple-evals' own form
    ('{"criteria_met": false}', False),
    ('Here you go:\n```JSON\n{"criteria_met": true}\n```\nHope that helps.', True),  # lenient: prose + label
    ('```\n{"criteria_met": false}\n```', False),
    ('{"criteria_met": "yes"}', None),  # not a boolean: ask again
])
def test_grader_output_parser_accepts_simple_evals_replies_and_documented_wrappings(reply, met):
    from cat_trl.rubrics.healthbench_grader import parse_grader_output

    parsed = parse_grader_output(reply)
    assert (parsed or {}).get("criteria_met") == met
