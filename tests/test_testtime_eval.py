"""Test-time CaT (`cat-trl eval`): selection estimators on groups where the right choice is known, the paper's
analyses on hand-made records, and the whole command on the embedded model (pool -> methods -> JSON/MD/PNG)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cat_trl.answers import AnswerMatcher
from cat_trl.cli.eval import load_config, run
from cat_trl.cli.eval import main as eval_main
from cat_trl.engines import SamplingSettings, TransformersEngine
from cat_trl.engines.base import Engine, Generation
from cat_trl.estimators import (
    Group,
    MinPPLEstimator,
    MutualPredictabilityEstimator,
    SelfBoNEstimator,
    parse_choice,
)
from cat_trl.evaluation.testtime import (
    AnswerScorer,
    MethodRun,
    PoolItem,
    analyses,
    build_methods,
    evaluate_pool,
    mean_se,
)

REPO = Path(__file__).resolve().parents[1]
GREEDY = SamplingSettings(max_new_tokens=8, temperature=0.0)


class ScriptedEngine(Engine):
    """Answers every conversation with a fixed text and records what it was asked (for the parsing paths)."""

    name = "scripted"

    def __init__(self, reply: str, finish_reason: str = "stop"):
        super().__init__()
        self.reply, self.seen, self.finish_reason = reply, [], finish_reason

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        self.seen += conversations
        self.stats.calls += 1
        self.stats.sequences += len(conversations)
        return [Generation(self.reply, prompt_tokens=5, completion_tokens=3, finish_reason=self.finish_reason)
                for _ in conversations]


@pytest.fixture(scope="module")
def engine(embedded_model_path):
    return TransformersEngine.from_pretrained(embedded_model_path, dtype="float32", device="cpu")


# ------------------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize(
    "text,n,expected",
    [
        ("The third one is right.\nBEST: 3", 4, 2),
        ("BEST: Response #2", 4, 1),
        ("best response is 4", 4, 3),
        ("2", 3, 1),
        ("I compared them; Response 1 has an error, so I pick Response 2.", 3, 1),
        ("BEST: 7", 4, None),  # out of range is not a choice
        ("BEST: 0", 4, None),
        ("They all look fine.", 4, None),
        ("", 4, None),
        (None, 4, None),
    ],
)
def test_parse_choice(text, n, expected):
    assert parse_choice(text, n) == expected


def test_self_bon_reads_the_choice_and_falls_back_only_when_asked():
    group = Group(prompt=[{"role": "user", "content": "What is 2+3?"}],
                  completions=["It is \\boxed{6}", "It is \\boxed{4}", "2+3 = \\boxed{5}"], question="What is 2+3?")
    picker = ScriptedEngine("Response 3 is correct.\nBEST: 3")
    ref = SelfBoNEstimator(picker, GREEDY).estimate([group])[0]
    assert ref.diagnostics["choice"] == 2 and ref.text == group.completions[2] and ref.answer == "5"
    prompt = picker.seen[0][0]["content"]
    assert "What is 2+3?" in prompt and all(c in prompt for c in group.completions)  # selection reads the question

    confused = ScriptedEngine("They are all good answers.")
    none_ref = SelfBoNEstimator(confused, GREEDY).estimate([group])[0]
    assert none_ref.text is None and none_ref.answer is None and none_ref.diagnostics["selection_failed"]
    first = SelfBoNEstimator(confused, GREEDY, fallback="first").estimate([group])[0]
    assert first.diagnostics["choice"] == 0 and first.answer == "6" and first.diagnostics["selection_failed"]
    # cut off by the token limit mid-comparison: the last "Response k" mentioned is no verdict; an explicit BEST is
    cut = SelfBoNEstimator(ScriptedEngine("Response 1 has an error. Response 2 looks", "length"), GREEDY)
    cut_ref = cut.estimate([group])[0]
    assert cut_ref.text is None and cut_ref.diagnostics["selector_cut_off"]
    done = SelfBoNEstimator(ScriptedEngine("BEST: 3\nBecause response 3 is", "length"), GREEDY).estimate([group])[0]
    assert done.diagnostics["choice"] == 2
    assert parse_choice("Response 2 looks", 3, strict=True) is None and parse_choice("Response 2 looks", 3) == 1
    for unfinished in ("Which is best: Response 2 or Response 3? Let me", "the best\n\nResponse 3 says", "BEST: 1"):
        assert parse_choice(unfinished, 3, strict=True) is None, unfinished  # "BEST: 1" may have become "BEST: 12"
    assert parse_choice("Compared.\n**BEST: 2**\nAnd", 3, strict=True) == 1
    # no question field: the prompt's last user message stands in
    SelfBoNEstimator(picker, GREEDY).estimate([Group(prompt=group.prompt, completions=group.completions)])
    assert "What is 2+3?" in picker.seen[-1][0]["content"]


def test_min_ppl_prefers_the_fluent_rollout(engine):
    """Real model: a fluent answer has a far lower mean NLL than character soup, wherever it sits in the group."""
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    fluent = "The capital of France is Paris. The final answer is \\boxed{Paris}."
    soup = "zq xv \\boxed{Qk} jw pfft 7#k ~~ vbn qq zr lmx"
    for completions, want in (([soup, fluent], 1), ([fluent, soup, soup], 0)):
        ref = MinPPLEstimator(engine).estimate([Group(prompt=prompt, completions=completions)])[0]
        assert ref.diagnostics["choice"] == want, ref.diagnostics
        assert ref.answer == "Paris"
        nll = ref.diagnostics["mean_nll"]
        assert len(nll) == len(completions) and min(nll) == nll[want]


def test_mutual_predictability_picks_the_answer_the_others_predict(engine):
    """Three rollouts tell the same story and one is an outlier: given the other three as context, each consensus
    rollout is predictable and the outlier is not, so the pick is one of the consensus rollouts -- even though the
    outlier is fluent too."""
    prompt = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]
    consensus = [
        "Tom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples. The final answer is \\boxed{7}.",
        "Tom starts with 3 apples and buys 4 more, so he has 3 + 4 = 7 apples in total. The final answer is "
        "\\boxed{7}.",
        "Tom starts with 3 apples and buys 4 more, so now he has 3 + 4 = 7 apples. The final answer is \\boxed{7}.",
    ]
    outlier = "Apples are a fruit that grow on trees in many countries. The final answer is \\boxed{12}."
    group = Group(prompt=prompt, completions=[outlier, *consensus])
    est = MutualPredictabilityEstimator(engine, seed=0)
    ref = est.estimate([group])[0]
    assert ref.diagnostics["choice"] in (1, 2, 3) and ref.answer == "7"
    nll = ref.diagnostics["mean_nll"]
    assert nll[0] > max(nll[1:])
    # every context holds the other G-1 rollouts as earlier answers, never the scored rollout itself
    pairs = est._pairs(group)
    for j, (conversation, target) in enumerate(pairs):
        assistant = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert target == group.completions[j] and target not in assistant
        assert sorted(assistant) == sorted(c for i, c in enumerate(group.completions) if i != j)
        assert conversation[-1]["role"] == "user"
    assert est._pairs(group) == pairs  # seeded: the same shuffles every time


def test_mutual_predictability_truncates_context_not_the_scored_rollout(engine):
    long = "word " * 400
    group = Group(prompt=[{"role": "user", "content": "Say words."}], completions=[long, long + "end", "short one"])
    est = MutualPredictabilityEstimator(engine, max_context_tokens=600)
    for j, (conversation, target) in enumerate(est._pairs(group)):
        assert target == group.completions[j]
        assert engine.count_chat_tokens(conversation) + engine.count_tokens(target) <= 600
        assert any("truncated" in m["content"] for m in conversation if m["role"] == "assistant")


STRICT_TEMPLATE = (  # Gemma/Mistral-style: one system message first, then user/assistant strictly alternating
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if not loop.first %}{{ raise_exception('system message not first') }}{% endif %}"
    "{% else %}{% set i = loop.index0 - (1 if messages[0]['role'] == 'system' else 0) %}"
    "{% if (m['role'] == 'user') != (i % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_mutual_predictability_under_a_strict_alternation_template(engine):
    """A system prompt and a template that rejects consecutive user turns or a late system message (Gemma's):
    the history holds the system message once, user/assistant alternate, and both the budget count and the
    log-prob call render without error."""
    import copy

    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.chat_template = STRICT_TEMPLATE
    strict = TransformersEngine(engine._provider, tokenizer, max_context_tokens=400)
    with pytest.raises(Exception, match="alternate"):
        strict.count_chat_tokens([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"}]
    completions = ["3 + 4 = \\boxed{7}", "The sum is \\boxed{7}. " + "More words. " * 60, "\\boxed{8}"]
    est = MutualPredictabilityEstimator(strict, seed=1)
    for conversation, _ in est._pairs(Group(prompt=prompt, completions=completions)):
        roles = [m["role"] for m in conversation]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert strict.count_chat_tokens(conversation) <= 400
    ref = est.estimate([Group(prompt=prompt, completions=completions)])[0]
    assert ref.diagnostics["choice"] is not None and all(v is not None for v in ref.diagnostics["mean_nll"])


# ------------------------------------------------------------------------------------------------- analyses


def _run(method, g, answers, scores, failed=None):
    return MethodRun(method, g, [None] * len(answers), answers, [0] * len(answers),
                     failed or [False] * len(answers), {}, 0.0, scores)


def test_analyses_on_hand_made_records():
    """Five questions, G = 4; the numbers below are counted by hand."""
    matcher = AnswerMatcher("string")
    synth = _run("synthesis", 4, ["7", "3", "5", None, "9"], [1.0, 0.0, 1.0, 0.0, 1.0])
    major = _run("majority", 4, ["7", "4", "6", None, "8"], [1.0, 1.0, 0.0, 0.0, 0.0])
    bon = _run("self_bon", 4, ["7", "3", "6", "2", "9"], [1.0, 0.0, 0.0, 0.0, 1.0])
    rollout_correct = [[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    runs = {("synthesis", 4): synth, ("majority", 4): major, ("self_bon", 4): bon}
    out = analyses(runs, rollout_correct, matcher, [4])["4"]
    # vs majority: q1 (3 vs 4), q2 (5 vs 6), q4 (9 vs 8) differ; q3 both missing = agree
    vm = out["synthesis_vs_majority"]
    assert (vm["n_disagree"], vm["disagree_share"]) == (3, 0.6)
    assert vm["synthesis_accuracy_when_disagree"] == pytest.approx(2 / 3)
    assert vm["other_accuracy_when_disagree"] == pytest.approx(1 / 3)
    # vs Self-BoN: q2 (5 vs 6) and q3 (None vs 2) differ
    vb = out["synthesis_vs_self_bon"]
    assert (vb["n_disagree"], vb["synthesis_accuracy_when_disagree"], vb["other_accuracy_when_disagree"]) == (2, 0.5, 0)
    # synthesis right while all 4 rollouts wrong: only q2
    assert out["synthesis_correct_all_rollouts_wrong"] == {"n": 1, "share": 0.2}
    assert out["pass_at_g"] == pytest.approx(3 / 5)
    # at G = 2 the last question's only correct rollout is out of reach
    runs2 = {("synthesis", 2): _run("synthesis", 2, ["7", "3", "5", None, "9"], [1.0, 0.0, 1.0, 0.0, 1.0])}
    out2 = analyses(runs2, rollout_correct, matcher, [2])["2"]
    assert out2["synthesis_correct_all_rollouts_wrong"]["n"] == 2 and out2["pass_at_g"] == pytest.approx(2 / 5)


def test_mean_and_standard_error():
    mean, se = mean_se([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx((1 / 3) ** 0.5 / 2)
    assert mean_se([1.0]) == (1.0, 0.0)


def test_pool_is_shared_and_nested_across_methods_and_g():
    """Majority at G reads exactly the first G rollouts of the one pool; Single averages every rollout; costs
    count generations per question."""
    matcher = AnswerMatcher("string")
    from cat_trl.answers import extract_boxed

    items = [
        PoolItem(0, "a", [{"role": "user", "content": "q0"}], "q0",
                 ["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{3}"], [4, 4, 4, 4], ["stop"] * 4, gold="2"),
        PoolItem(1, "b", [{"role": "user", "content": "q1"}], "q1",
                 ["\\boxed{5}", "\\boxed{5}", "\\boxed{6}", "\\boxed{6}"], [2, 2, 2, 2], ["stop"] * 4, gold="6"),
    ]
    methods = build_methods(["single", "majority", "self_bon"], ScriptedEngine("BEST: 4"), answer_extraction="boxed",
                            matcher=matcher, anchor_sampling=GREEDY,
                            selector_sampling=GREEDY, synthesis_template="{responses}")
    result = evaluate_pool(items, methods, [1, 2, 4], AnswerScorer(matcher, extract_boxed), matcher, extract_boxed,
                           progress=False)
    acc = result["accuracy"]
    assert acc["majority"]["1"]["accuracy"] == 0.0  # "1" and "5"
    assert acc["majority"]["2"]["accuracy"] == 0.0  # first-seen wins the 1-1 tie: "1", "5"
    assert acc["majority"]["4"]["accuracy"] == 0.5  # "2" wins q0; q1 ties 2-2 -> "5"
    assert acc["single"]["4"]["accuracy"] == pytest.approx((0.5 + 0.5) / 2)
    assert acc["self_bon"]["4"]["accuracy"] == 0.5  # picks rollout 4: "3" (wrong), "6" (right)
    assert acc["self_bon"]["2"]["fallback_rate"] == 1.0  # "BEST: 4" is out of range for 2 responses
    assert acc["self_bon"]["1"]["fallback_rate"] == 0.0  # G=1 needs no selection call
    cost = result["cost"]
    assert cost["self_bon"]["4"]["generations"] == 5 and cost["majority"]["4"]["generations"] == 4
    assert cost["single"]["4"]["generations"] == 1 and cost["self_bon"]["1"]["extra_generations"] == 0
    assert cost["majority"]["4"]["generated_tokens_vs_one_rollout"] == pytest.approx(4.0)
    q = result["questions"][1]
    assert q["rollout_scores"] == [0.0, 0.0, 1.0, 1.0] and q["methods"]["self_bon"]["4"]["choice"] == 3
    # Single graded on its first rollout only: its accuracy changes, the pass@G / all-wrong analyses still see all 4
    one = evaluate_pool(items, methods, [1, 2, 4], AnswerScorer(matcher, extract_boxed), matcher, extract_boxed,
                        single_rollouts=1, progress=False)
    assert one["accuracy"]["single"]["4"]["accuracy"] == 0.0  # "1" (q0) and "5" (q1) are both wrong
    assert one["analyses"] == result["analyses"] and one["questions"][1]["rollout_scores"] == [0.0, 0.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------- the command


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "eval.yaml"
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_problem_before_any_model_loads(tmp_path):
    base = "model_name_or_path: /nonexistent/model\ndataset_name: synthetic_math\n"
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['num_generation'\]"):
        load_config(_write(tmp_path, base + "num_generation: [1, 2]\n"))
    with pytest.raises(ValueError, match="unknown method"):
        load_config(_write(tmp_path, base + "methods: [synthesis, best_of_n]\n"))
    with pytest.raises(ValueError, match="positive integers"):
        load_config(_write(tmp_path, base + "num_generations: [0, 4]\n"))
    with pytest.raises(ValueError, match="match must be"):
        load_config(_write(tmp_path, base + "match: fuzzy\n"))
    # one synthesis prompt serves both variants: {question} is refused while question-blind synthesis is listed
    asks = "synthesis_prompt: 'Q: {question} R: {responses}'\n"
    with pytest.raises(ValueError, match="method `synthesis` is question-blind"):
        load_config(_write(tmp_path, base + asks + "methods: [synthesis, synthesis_with_question]\n"))
    load_config(_write(tmp_path, base + asks + "methods: [synthesis_with_question]\n"))
    with pytest.raises(ValueError, match="responses"):
        load_config(_write(tmp_path, base + "synthesis_prompt: 'no slot'\nmethods: [synthesis]\n"))
    # a list on the command line: TRL's `--key a b` or one YAML list, the same list either way
    for argv in (["--methods", "single", "synthesis"], ["--methods", "[single, synthesis]"]):
        assert load_config(_write(tmp_path, base), argv)[0].methods == ["single", "synthesis"]
    assert load_config(_write(tmp_path, base), ["--methods", "synthesis"])[0].methods == ["synthesis"]
    assert load_config(_write(tmp_path, base), ["--num_generations", "1", "8"])[0].num_generations == [1, 8]
    with pytest.raises(ValueError, match="unknown methods"):
        load_config(_write(tmp_path, base), ["--methods", "single", "best_of_n"])
    with pytest.raises(ValueError, match=r"methods must be a list, got 'single' \(in YAML: methods: \[a, b\]\)"):
        load_config(_write(tmp_path, base + "methods: single\n"))
    config, data = load_config(_write(tmp_path, base), ["--num_generations", "[2, 4]", "--dataset_max_samples=3"])
    assert config.num_generations == [2, 4] and data.dataset_max_samples == 3
    # HealthBench: majority needs final answers; the grader must be configured -- both before the model loads
    hb = (f"model_name_or_path: /nonexistent/model\ndataset_name: {REPO}/tests/fixtures/healthbench_sample.jsonl\n"
          "healthbench_holdout: 2\n")
    with pytest.raises(ValueError, match="need final answers"):
        run(*load_config(_write(tmp_path, hb)))
    with pytest.raises(ValueError, match="grader_base_url"):
        run(*load_config(_write(tmp_path, hb + "methods: [single, synthesis]\n")))
    assert eval_main([_write(tmp_path, base + "methods: nope\n")]) == 2


def test_shipped_eval_recipes_load():
    for path in sorted((REPO / "yaml" / "eval").glob("*.yaml")):
        config, data = load_config(str(path))
        assert config.num_generations and config.methods, path


def test_eval_command_on_the_embedded_model(tmp_path, embedded_model_path, math500_path, monkeypatch):
    """The whole command on real components: the embedded model samples one pool over a MATH-500 subset, every
    method runs on it, and the JSON, Markdown and PNG come out consistent with each other."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "eval"
    argv = [str(REPO / "yaml" / "eval" / "quickstart-cpu.yaml"), "--model_name_or_path", embedded_model_path,
            "--dataset_name", str(math500_path), "--dataset_max_samples", "3", "--num_generations", "[1, 2]",
            "--max_new_tokens", "48", "--anchor_max_new_tokens", "48", "--selector_max_new_tokens", "8",
            "--output_dir", str(out), "--progress", "false"]
    assert eval_main(argv) == 0
    result = json.loads((out / "eval_results.json").read_text())
    assert (out / "eval_accuracy.png").stat().st_size > 1000
    report = (out / "eval_report.md").read_text()
    assert "Synthesis (CaT)" in report and "Mutual predictability" in report and "Cost per question at G=2" in report
    methods = ["single", "majority", "self_bon", "min_ppl", "mutual_predictability", "synthesis",
               "synthesis_with_question"]
    assert list(result["accuracy"]) == methods
    questions = result["questions"]
    assert len(questions) == 3 and all(len(q["rollouts"]) == 2 for q in questions)
    for q in questions:
        assert q["gold"] and set(q["methods"]) == set(methods)
        for g in ("1", "2"):
            assert q["methods"]["synthesis"][g]["reference"] is not None
            # a selection's answer is the chosen rollout's answer, from this pool
            for m in ("self_bon", "min_ppl", "mutual_predictability", "majority"):
                pick = q["methods"][m][g]
                if m != "majority" and pick["choice"] is not None:
                    assert pick["choice"] < int(g) and pick["answer"] == q["rollout_answers"][pick["choice"]]
        assert q["methods"]["min_ppl"]["1"]["choice"] == 0
    # JSON numbers agree with the per-question records
    for m in methods:
        for g in ("1", "2"):
            scores = [q["methods"][m][g]["score"] for q in questions]
            assert result["accuracy"][m][g]["accuracy"] == pytest.approx(sum(scores) / 3)
    assert result["accuracy"]["single"]["2"]["accuracy"] == pytest.approx(
        sum(sum(q["rollout_scores"]) / 2 for q in questions) / 3)
    cost = result["cost"]
    assert cost["synthesis"]["2"]["extra_generations"] == 1 and cost["min_ppl"]["2"]["scored_tokens"] > 0
    assert cost["mutual_predictability"]["2"]["scored_tokens"] > cost["min_ppl"]["2"]["scored_tokens"]
    assert result["meta"]["n_questions"] == 3 and "2" in result["analyses"]
    assert list(out.glob("wandb/offline-run-*/run-*.wandb"))  # report_to: wandb in the recipe, offline


class _Grader(BaseHTTPRequestHandler):
    """An OpenAI-compatible grader that marks every rubric item as met and counts the calls."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1
        text = json.dumps({"explanation": "ok", "criteria_met": True})
        payload = json.dumps({"model": body.get("model"), "choices": [{"message": {"role": "assistant",
                              "content": text}, "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        payload = json.dumps({"data": [{"id": "grader"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def test_healthbench_eval_grades_every_method_over_http(tmp_path, tiny_model_path):
    """Open-ended: responses of every method go to the physician-rubric grader over a real loopback HTTP server;
    with every item met, each score is the example's (all points) / (positive points), exactly."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Grader)
    srv.calls = 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        config, data = load_config(_write(tmp_path, f"""
model_name_or_path: {tiny_model_path}
dataset_name: {REPO}/tests/fixtures/healthbench_sample.jsonl
healthbench_holdout: 2
methods: [single, self_bon, min_ppl, synthesis]
num_generations: [1, 2]
max_new_tokens: 8
anchor_max_new_tokens: 8
selector_max_new_tokens: 4
grader_base_url: http://127.0.0.1:{srv.server_address[1]}/v1
grader_model: grader
output_dir: {tmp_path}/hb
progress: false
"""))
        result = run(config, data)
    finally:
        srv.shutdown()
    records = [json.loads(line) for line in (REPO / "tests/fixtures/healthbench_sample.jsonl").read_text().splitlines()]
    by_id = {r["prompt_id"]: r for r in records}
    assert result["meta"]["verifiable"] is False and result["analyses"] == {}
    assert "grader" in result["meta"]["scorer"]
    for q in result["questions"]:
        rubric = by_id[q["problem_id"]]["rubrics"]
        expected = sum(r["points"] for r in rubric) / sum(r["points"] for r in rubric if r["points"] > 0)
        for m in ("self_bon", "min_ppl", "synthesis"):
            for g in ("1", "2"):
                assert q["methods"][m][g]["score"] == pytest.approx(expected)
        assert q["rollout_scores"] == [pytest.approx(expected)] * 2
    # one grader call per rubric item per distinct graded response (identical requests hit the engine's cache):
    # the pool's rollouts (which every selection picks from) and the two synthesized references
    expected_calls = 0
    for q in result["questions"]:
        texts = set(q["rollouts"]) | {q["methods"]["synthesis"][g]["reference"] for g in ("1", "2")}
        expected_calls += len(texts) * len(by_id[q["problem_id"]]["rubrics"])
    assert srv.calls == expected_calls
