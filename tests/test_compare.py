"""`cat-trl compare` on the tiny model: structure of the results, the held-out split is never trained on, labels
reach a reward only in the `gold` arm, and CaT-SFT's data builder (question-blind, one reference per question)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cat_trl.callbacks import read_group_rows
from cat_trl.cli.compare import main, parse_args
from cat_trl.comparison import Comparison, split_heldout

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "tests" / "recipes" / "compare-tiny.yaml")


def _argv(tiny_model_path, out, *extra):
    return ["--config", RECIPE, "--model_name_or_path", tiny_model_path, "--output_dir", str(out), *extra]


def test_compare_two_arms_two_points(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "cmp"
    assert main([RECIPE, "--model_name_or_path", tiny_model_path, "--output_dir", str(out),
                 "--arms", "none", "cat", "gold"]) == 0
    results = json.loads((out / "compare_results.json").read_text())
    arms = results["runs"]["default"]["arms"]
    assert set(arms) == {"none", "cat", "gold"}
    assert results["eval_steps"] == [0, 1, 2]
    for arm in ("cat", "gold"):
        curve = arms[arm]["curve"]
        assert [r["step"] for r in curve] == [0, 1, 2]
        for r in curve:
            assert 0 <= r["greedy_accuracy"] <= 1 and 0 <= r["pass1"] <= 1 and r["greedy_accuracy_se"] >= 0
            # per-problem outcomes (paired statistics need them), in held-out order, agreeing with the aggregate
            assert [p["index"] for p in r["problems"]] == list(range(12))
            assert sum(p["correct"] for p in r["problems"]) / 12 == pytest.approx(r["greedy_accuracy"])
        assert curve[0] == arms["none"]["curve"][0]  # every arm starts from the same scored model
    assert "cat/reference_parse_failure" in arms["cat"]["diagnostics"]
    assert results["heldout_size"] == 12 and results["machine"]
    # provenance: the full configuration of every arm, the code revision and package versions
    assert results["config"]["arms"]["cat"]["training"]["cat_estimator"] == "synthesis"
    assert "cat_synthesis_prompt" in results["config"]["arms"]["cat"]["training"]
    assert results["provenance"]["packages"]["trl"] and results["provenance"]["git"]["revision"]
    assert len(results["config_sha256"]) == 64
    report = (out / "compare_report.md").read_text()
    assert "CaT-RL (synthesis)" in report and "GRPO on gold labels (oracle)" in report
    assert (out / "compare_accuracy.png").stat().st_size > 1000

    # Held-out problems are never trained on: no question the CaT arm trained on is in heldout.jsonl.
    held = {json.loads(line)["question"] for line in (out / "heldout.jsonl").read_text().splitlines()}
    trained = {row["prompt"] for row in read_group_rows(str(out / "cat"))}
    assert len(held) == 12 and trained and not held & {t.split("\n\n")[0] for t in trained}


def test_split_heldout_drops_training_copies_of_heldout_questions():
    rows = [{"question": f"q{i % 30}", "gold_answer": str(i)} for i in range(60)]  # every question twice
    train, held = split_heldout(rows, 10, seed=1)
    assert len(held) == 10 and not {r["question"] for r in train} & {r["question"] for r in held}
    assert split_heldout(rows, 10, seed=1) == (train, held)  # seeded
    with pytest.raises(ValueError, match="heldout_size"):
        split_heldout(rows, 60, seed=0)


def _reward_calls(monkeypatch):
    """Records what the CaT arm's reward function receives (a fresh record each time; spies never stack)."""
    from cat_trl.rewards.verifiable import CaTMathReward

    monkeypatch.undo()
    calls, original = [], CaTMathReward.__call__

    def spy(self, completions, cat_reference=None, log_metric=None, **kwargs):
        calls.append({"keys": sorted(kwargs), "completions": list(map(str, completions)),
                      "cat_reference": list(cat_reference or [])})
        return original(self, completions, cat_reference=cat_reference, log_metric=log_metric, **kwargs)

    monkeypatch.setattr(CaTMathReward, "__call__", spy)
    return calls


@pytest.mark.parametrize("arm", ["cat", "majority", "self_bon", "min_ppl", "mutual_predictability"])
def test_labels_reach_only_the_gold_arm(arm, tmp_path, tiny_model_path, monkeypatch):
    """Scrambling the gold labels leaves every label-free arm's training identical (same reward inputs, same
    losses); the gold arm's reward reads them."""
    import cat_trl.comparison.runner as runner
    import cat_trl.data as data

    load = data.load_train_dataset

    def scrambled(script_args):
        dataset = load(script_args)
        golds = list(dataset["gold_answer"])
        random.Random(7).shuffle(golds)
        return dataset.remove_columns("gold_answer").add_column("gold_answer", [str(int(g) + 1) for g in golds])

    runs = []
    for loader in (load, scrambled):
        calls = _reward_calls(monkeypatch)
        monkeypatch.setattr(data, "load_train_dataset", loader)
        compare_args, arm_args, root = parse_args(_argv(tiny_model_path, tmp_path / f"run{len(runs)}",
                                                        "--arms", arm, "--heldout_k", "0"))
        comparison = Comparison(compare_args, arm_args, root)
        comparison.prepare()
        result = comparison.run_rl(arm, None)
        history = json.loads((Path(root) / arm / "log_history.json").read_text())
        runs.append({"calls": calls, "loss": [h.get("loss") for h in history],
                     "reward": [h.get("reward") for h in history],
                     "golds": [r["gold_answer"] for r in comparison.train_rows], "result": result})
    normal, scrambled_run = runs
    assert normal["golds"] != scrambled_run["golds"]  # the labels really differ between the two runs
    assert normal["calls"] and all("gold_answer" not in c["keys"] for c in normal["calls"])
    assert normal["calls"] == scrambled_run["calls"]
    assert normal["loss"] == scrambled_run["loss"] and normal["reward"] == scrambled_run["reward"]
    assert normal["result"]["trained_questions"] == scrambled_run["result"]["trained_questions"]

    if arm != "cat":
        return
    from cat_trl.rewards.gold import GoldAnswerReward

    gold = GoldAnswerReward()
    assert gold(["\\boxed{5}", "\\boxed{6}", "no"], gold_answer=["5", "5", "5"]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="gold_answer"):
        gold(["\\boxed{5}"])
    assert runner.RL_ARMS["cat"] == "synthesis"


def test_cat_sft_data_is_question_blind_one_reference_per_question(tiny_model_path):
    from cat_trl.comparison.cat_sft import build_cat_sft_rows
    from cat_trl.data import load_synthetic_math
    from cat_trl.engines import SamplingSettings, TransformersEngine
    from cat_trl.estimators import SynthesisEstimator

    engine = TransformersEngine.from_pretrained(tiny_model_path, dtype="float32")
    rows = [dict(r) for r in load_synthetic_math(5, seed=3, max_steps=1)]
    estimator = SynthesisEstimator(engine, SamplingSettings(max_new_tokens=12, seed=0))
    prompts = []
    estimate = estimator.estimate
    estimator.estimate = lambda groups: [prompts.append(r.diagnostics["anchor_prompt"]) or r for r in estimate(groups)]
    sft, stats = build_cat_sft_rows(engine, rows, 3, SamplingSettings(max_new_tokens=12, seed=0), estimator,
                                    questions_per_call=2)
    assert stats["questions"] == 5 and stats["references"] + stats["dropped"] == 5 and len(prompts) == 5
    assert [r["prompt"] for r in sft] == [r["prompt"] for r in rows][: len(sft)]
    for row, prompt, source in zip(sft, prompts, rows):
        assert source["question"] not in prompt  # the anchor never saw the question
        assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"]
    with pytest.raises(ValueError, match="question-blind"):
        build_cat_sft_rows(engine, rows, 3, SamplingSettings(max_new_tokens=4),
                           SynthesisEstimator(engine, SamplingSettings(max_new_tokens=4), include_question=True))


def test_cat_sft_data_does_not_depend_on_the_labels(tiny_model_path):
    """Scrambled gold answers give the same CaT-SFT rows: labels never reach its references."""
    from cat_trl.comparison.cat_sft import build_cat_sft_rows
    from cat_trl.data import load_synthetic_math
    from cat_trl.engines import SamplingSettings, TransformersEngine
    from cat_trl.estimators import SynthesisEstimator

    engine = TransformersEngine.from_pretrained(tiny_model_path, dtype="float32")
    rows = [dict(r) for r in load_synthetic_math(4, seed=5, max_steps=1)]
    scrambled = [{**r, "gold_answer": str(int(r["gold_answer"]) + 17)} for r in rows]
    built = [build_cat_sft_rows(engine, data, 2, SamplingSettings(max_new_tokens=10, seed=0),
                                SynthesisEstimator(engine, SamplingSettings(max_new_tokens=10, seed=0)))[0]
             for data in (rows, scrambled)]
    assert built[0] and built[0] == built[1]


@pytest.mark.parametrize("recipe", sorted(str(p) for p in (REPO / "yaml" / "compare").glob("*.yaml")))
def test_shipped_compare_recipes_parse(recipe):
    """Every arm of every shipped comparison parses (GPU-only settings overridden so the check runs on CPU)."""
    compare_args, arm_args, root = parse_args(["--config", recipe, "--bf16", "false", "--use_cpu", "true"])
    assert compare_args.heldout_size >= 200 and "cat" in compare_args.arms
    for arm in compare_args.arms:
        _, args, model_args = arm_args(arm)
        assert args.output_dir == str(Path(root) / arm) and model_args.model_name_or_path
        if arm == "cat":
            assert args.cat_estimator == "synthesis"


def test_seeds_ood_and_cat_sft_on_the_rl_arms_questions(tmp_path, tiny_model_path):
    """Two seeds, an out-of-distribution held-out set, and CaT-SFT trained on exactly the questions (and order) the
    CaT arm trained on -- read from the CaT arm's own sampler and checked against what its reward calls saw."""
    out = tmp_path / "seeds"
    assert main([RECIPE, "--model_name_or_path", tiny_model_path, "--output_dir", str(out),
                 "--arms", "none", "cat", "cat_sft", "--seeds", "0", "1", "--ood_size", "6", "--heldout_k", "0",
                 "--sft_validation_size", "4", "--sft_batch_size", "4", "--sft_epochs", "1", "--sft_lora_r", "4"]) == 0
    results = json.loads((out / "compare_results.json").read_text())
    assert set(results["runs"]) == {"0", "1"} and results["ood_size"] == 6
    split = [json.loads(line)["split"] for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert split.count("in") == 12 and split.count("ood") == 6
    for seed in ("0", "1"):
        arms = results["runs"][seed]["arms"]
        trained = arms["cat"]["trained_questions"]
        # what the CaT arm really trained on: the prompts of its logged groups, in order of first appearance
        logged = list(dict.fromkeys(" ".join(r["prompt"].split("\n\n")[0].split()).lower()
                                    for r in read_group_rows(str(out / f"seed-{seed}" / "cat"))))
        assert trained == logged and len(trained) == 4  # 2 steps x 2 prompts
        assert arms["cat_sft"]["trained_questions"] == trained  # CaT-SFT: the same questions, the same order
        assert arms["cat_sft"]["diagnostics"]["sft_validation_references"] >= 1
        last = arms["cat"]["curve"][-1]
        assert last["ood"]["n"] == 6 and 0 <= last["ood"]["greedy_accuracy"] <= 1
    orders = [results["runs"][s]["arms"]["cat"]["trained_questions"] for s in ("0", "1")]
    assert orders[0] != orders[1]  # the training seed changes the sampler's order
    report = (out / "compare_report.md").read_text()
    assert "## Seed 0" in report and "## Seed 1" in report and "## Over seeds" in report
    assert "Paired differences, held-out split" in report and "out-of-distribution set" in report
    assert "CaT-RL (synthesis) − initial model" in report


def test_pieces_merge_and_other_settings_are_refused_in_the_same_directory(tmp_path, tiny_model_path, capsys):
    """A long comparison runs in pieces (some arms or seeds per session) into one directory and is merged; a piece
    with any other setting is refused and nothing is overwritten."""
    out = tmp_path / "cmp"
    args = [RECIPE, "--model_name_or_path", tiny_model_path, "--output_dir", str(out), "--heldout_k", "0"]
    assert main([*args, "--arms", "none"]) == 0
    before = (out / "compare_results.json").read_text()
    assert main([*args, "--arms", "none", "--heldout_max_new_tokens", "8"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert (out / "compare_results.json").read_text() == before  # nothing overwritten
    assert main([*args, "--arms", "cat"]) == 0  # another piece: other arms, same experiment
    merged = json.loads((out / "compare_results.json").read_text())
    assert set(merged["runs"]["default"]["arms"]) == {"none", "cat"} and len(merged["pieces"]) == 2
    assert set(merged["config"]["arms"]) == {"none", "cat"}
    assert "CaT-RL (synthesis) − initial model" in (out / "compare_report.md").read_text()


def test_pieces_run_side_by_side_in_separate_directories_merge(tmp_path, tiny_model_path, capsys):
    """Two pieces of one experiment run into two directories (e.g. two processes at once) merge into one result with
    both pieces' provenance, once each, and the run directories of both; another experiment is refused."""
    import importlib.util

    from cat_trl.comparison.runner import merge_directories

    spec = importlib.util.spec_from_file_location("merge_compare", REPO / "scripts" / "merge_compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    args = [RECIPE, "--model_name_or_path", tiny_model_path, "--heldout_k", "0"]
    assert main([*args, "--output_dir", str(a), "--arms", "none"]) == 0
    assert main([*args, "--output_dir", str(b), "--arms", "cat"]) == 0
    assert main([*args, "--output_dir", str(other), "--arms", "cat", "--heldout_max_new_tokens", "8"]) == 0
    assert script.main([str(a), str(b)]) == 0
    merged = json.loads((a / "compare_results.json").read_text())
    assert set(merged["runs"]["default"]["arms"]) == {"none", "cat"} and len(merged["pieces"]) == 2
    assert (a / "cat" / "log_history.json").is_file()
    assert "CaT-RL (synthesis) − initial model" in (a / "compare_report.md").read_text()
    assert len(merge_directories([str(a), str(b)], str(a))["pieces"]) == 2  # merging again adds nothing
    before = (a / "compare_results.json").read_text()
    assert script.main([str(a), str(other)]) == 2
    assert "different configurations" in capsys.readouterr().err
    assert (a / "compare_results.json").read_text() == before


def test_merging_directories_keeps_every_piece_of_every_directory(tmp_path):
    """A source directory that several pieces ran into (a merge itself) brings all its pieces' provenance, not only its
    last one; pieces seen in two sources are kept once, and the wall time is their sum."""
    from cat_trl.comparison.runner import merge_directories

    def piece(name: str, seed: int, arm: str, wall: float) -> dict:
        return {"provenance": {"time_utc": name}, "wall_seconds": wall, "settings": {"arms": [arm]}}

    def result(seed_arms: dict[str, list[str]], pieces: list[dict]) -> dict:
        runs = {s: {"seed": int(s), "arms": {a: {"arm": a, "curve": []} for a in arms}} for s, arms in seed_arms.items()}
        last = pieces[-1]
        return {"runs": runs, "config": {"compare": {}, "arms": {}}, "experiment_sha256": "e", "pieces": pieces,
                **{k: last[k] for k in ("provenance", "wall_seconds", "settings")}}

    p0, p1, p2, p3 = (piece(f"t{i}", 0, "cat", 10.0 * (i + 1)) for i in range(4))
    dirs = {"target": result({"0": ["none", "cat"]}, [p0]),
            "a": result({"0": ["none", "cat"], "1": ["none", "cat", "cat_sft"]}, [p0, p1, p2]),  # a merge itself
            "b": result({"0": ["none", "cat"], "1": ["gold"]}, [p0, p3])}
    for name, content in dirs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare_results.json").write_text(json.dumps(content))
    merged = merge_directories([str(tmp_path / n) for n in ("target", "a", "b")], str(tmp_path / "target"))
    assert [p["provenance"]["time_utc"] for p in merged["pieces"]] == ["t0", "t1", "t2", "t3"]
    assert merged["wall_seconds"] == 10.0 + 20.0 + 30.0 + 40.0
    assert set(merged["runs"]["1"]["arms"]) == {"none", "cat", "cat_sft", "gold"}


def test_heldout_evaluator_scores_known_outcomes_exactly():
    """A scripted policy that answers right on problems 0 and 2, wrong on 1, and with no answer on 3."""
    from cat_trl.answers import AnswerMatcher, get_extractor
    from cat_trl.comparison.heldout import HeldOutEvaluator, HeldOutSettings
    from cat_trl.engines import Generation
    from cat_trl.engines.base import Engine

    rows = [{"prompt": [{"role": "user", "content": f"problem {i}"}], "gold_answer": str(10 + i),
             "split": "ood" if i == 4 else "in"} for i in range(5)]
    replies = {0: "\\boxed{10}", 1: "\\boxed{99}", 2: "so \\boxed{12}", 3: "I am not sure.", 4: "\\boxed{14}"}

    class Scripted(Engine):
        def generate(self, conversations, sampling, chat_template_kwargs=None):
            out = []
            for c in conversations:
                i = int(c[-1]["content"].split()[-1])
                # sampled answers: right only for problem 0
                text = replies[i] if sampling.temperature == 0 else ("\\boxed{10}" if i == 0 else "\\boxed{0}")
                out.append(Generation(text))
            return out

    result = HeldOutEvaluator(rows, AnswerMatcher("string"), get_extractor("boxed"),
                              HeldOutSettings(k=2)).evaluate(Scripted())
    assert result["greedy_accuracy"] == pytest.approx(2 / 4) and result["n"] == 4
    assert result["no_answer_rate"] == pytest.approx(1 / 4)
    assert result["pass1"] == pytest.approx(1 / 4)
    assert result["ood"] == {**result["ood"], "n": 1, "greedy_accuracy": 1.0, "pass1": 0.0}
    assert [p["correct"] for p in result["problems"]] == [True, False, True, False, True]
    assert [p["answer"] for p in result["problems"]][:4] == ["10", "99", "12", None]
