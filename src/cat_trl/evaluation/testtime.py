"""Test-time CaT versus selection: one pool of rollouts, every method, every G, the paper's analyses.

The paper's central claim is that *synthesis beats selection* (arXiv 2509.14234, Sec. 4.5). To test it fairly, all
methods must see the *same* rollouts: `sample_pool` draws G_max rollouts per question once, and every method at
every G reads the first G of them (nested subsets, so a curve over G moves only because G does). Methods are the
core `ReferenceEstimator`s -- the same objects CaT-RL can use as references -- plus `single` (one rollout's accuracy,
averaged over the whole pool, the lowest-variance estimate of it).

Costs are accounted per method from the engine's own counters (generations, generated tokens, prompt/prefill
tokens, forward-only scored tokens), so "1 sample of a trained policy vs G rollouts + 1 synthesis" comparisons
are read off the same run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..answers import AnswerMatcher
from ..engines.base import Conversation, Engine, SamplingSettings
from ..estimators import SELECTION, EstimatorSpec, Group, Reference, ReferenceEstimator, build_estimator

logger = logging.getLogger(__name__)

METHODS = ("single", "majority", "self_bon", "min_ppl", "mutual_predictability", "synthesis", "synthesis_with_question")
VERIFIABLE_ONLY = ("majority",)


@dataclass
class PoolItem:
    """One question and its G_max rollouts. `gold` (math) or `example` (HealthBench rubrics) is read only by the
    scorer, never by a method."""

    index: int
    problem_id: str
    prompt: Conversation
    question: str
    rollouts: list[str]
    rollout_tokens: list[int]
    finish_reasons: list[str]
    gold: str | None = None
    example: dict[str, Any] | None = None


@dataclass
class MethodRun:
    """One method at one G over all questions: what it chose and what it cost."""

    method: str
    g: int
    texts: list[str | None]
    answers: list[str | None]
    choices: list[int | None]
    failed: list[bool]  # a selector could not choose (unparseable pick, nothing scorable) and fell back to rollout 1
    cost: dict[str, float]
    seconds: float
    scores: list[float] = field(default_factory=list)


def _progress(iterable, total: int | None, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def sample_pool(
    engine: Engine,
    rows: Sequence[dict[str, Any]],
    g_max: int,
    sampling: SamplingSettings,
    *,
    chat_template_kwargs: dict[str, Any] | None = None,
    questions_per_call: int = 8,
    progress: bool = True,
    postprocess: Callable[[str], str] = lambda text: text,
) -> list[PoolItem]:
    """G_max rollouts per row (`prompt`, `question`, `problem_id`, optional `gold_answer` / `example`), sampled once.

    Rows go to the engine `questions_per_call` at a time (a progress bar step each); the seed of call k is
    `sampling.seed + k`, so a pool is reproducible for a given seed and chunking.
    """
    if g_max < 1:
        raise ValueError(f"G_max must be >= 1, got {g_max}")
    items: list[PoolItem] = []
    chunks = [rows[i : i + questions_per_call] for i in range(0, len(rows), questions_per_call)]
    for k, chunk in enumerate(_progress(chunks, len(chunks), f"sampling {g_max} rollouts/question", progress)):
        seeded = sampling if sampling.seed is None else SamplingSettings(**{**sampling.to_dict(), "seed": sampling.seed + k})
        conversations = [list(row["prompt"]) for row in chunk for _ in range(g_max)]
        outputs = engine.generate(conversations, seeded, chat_template_kwargs)
        for j, row in enumerate(chunk):
            outs = outputs[j * g_max : (j + 1) * g_max]
            items.append(
                PoolItem(
                    index=len(items),
                    problem_id=str(row.get("problem_id", len(items))),
                    prompt=list(row["prompt"]),
                    question=row.get("question") or "",
                    rollouts=[postprocess(o.text) for o in outs],
                    rollout_tokens=[o.completion_tokens for o in outs],
                    finish_reasons=[o.finish_reason for o in outs],
                    gold=row.get("gold_answer"),
                    example=row.get("example"),
                )
            )
    return items


# ---------------------------------------------------------------------------------------------------- scoring


class AnswerScorer:
    """Verifiable tasks: 1.0 when the method's final answer matches the gold answer (string or math-verify)."""

    verifiable = True

    def __init__(self, matcher: AnswerMatcher, extract: Callable[[str], str | None]):
        self.matcher = matcher
        self.extract = extract
        self.name = f"answer match ({matcher.mode})"

    def score(self, items: list[PoolItem], texts: list[str | None], answers: list[str | None]) -> list[float]:
        out = []
        for item, answer in zip(items, answers):
            if item.gold is None:
                raise ValueError(f"question {item.problem_id} has no gold answer to score against")
            out.append(1.0 if answer is not None and self.matcher.match(answer, str(item.gold)) else 0.0)
        return out


class RubricGraderScorer:
    """Open-ended tasks (HealthBench): the physician-rubric grader, simple-evals semantics, one batch per call."""

    verifiable = False

    def __init__(self, grader):
        self.grader = grader
        self.name = f"HealthBench rubric grader ({grader.grader_model})"

    def score(self, items: list[PoolItem], texts: list[str | None], answers: list[str | None]) -> list[float]:
        examples = []
        for item in items:
            if item.example is None:
                raise ValueError(f"question {item.problem_id} has no rubrics to grade against")
            examples.append(item.example)
        result = self.grader.grade(examples, [t or "" for t in texts])
        return [float(e["metrics"]["overall_score"]) for e in result["examples"]]


# ---------------------------------------------------------------------------------------------------- methods


def build_methods(
    names: Sequence[str],
    engine: Engine,
    *,
    answer_extraction: str | None,
    matcher: AnswerMatcher,
    anchor_sampling: SamplingSettings,
    selector_sampling: SamplingSettings,
    synthesis_template: str,
    max_context_tokens: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, ReferenceEstimator | None]:
    """name -> estimator (None for `single`), each built from its `EstimatorSpec`. `answer_extraction=None` is an
    open-ended task (no final answers). Selection methods fall back to rollout 1 when they cannot choose (the failure
    rate is reported), so every method answers every question."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if answer_extraction is None and (bad := [n for n in names if n in VERIFIABLE_ONLY]):
        raise ValueError(f"{bad} need final answers; open-ended tasks support {[m for m in METHODS if m not in bad]}")
    common = dict(answer_extraction=answer_extraction, match=matcher.mode, match_timeout=matcher.timeout,
                  chat_template_kwargs=chat_template_kwargs, max_context_tokens=max_context_tokens, fallback="first")
    kinds = {"synthesis_with_question": "synthesis"}
    extra = {"self_bon": {"sampling": selector_sampling}, "mutual_predictability": {"seed": seed},
             "synthesis": {"sampling": anchor_sampling, "template": synthesis_template},
             "synthesis_with_question": {"sampling": anchor_sampling, "template": synthesis_template,
                                         "include_question": True}}
    specs = {name: EstimatorSpec(kinds.get(name, name), **common, **extra.get(name, {}))
             for name in names if name != "single"}
    return {name: build_estimator(specs[name], engine) if name in specs else None for name in names}


def _engine_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def run_method(name: str, estimator: ReferenceEstimator | None, items: list[PoolItem], g: int) -> MethodRun:
    """One method at one G. Selection at G=1 is the rollout itself (no engine call)."""
    n = max(len(items), 1)
    rollout_tokens = sum(sum(item.rollout_tokens[:g]) for item in items) / n
    base = {"rollouts": float(g), "rollout_tokens": rollout_tokens, "extra_generations": 0.0,
            "extra_generated_tokens": 0.0, "extra_prompt_tokens": 0.0, "scored_tokens": 0.0}
    start = time.perf_counter()
    if estimator is None or (name in SELECTION and g == 1):
        texts = [item.rollouts[0] for item in items]
        extract = getattr(estimator, "extract_answer", None)
        answers = [extract(t) if extract else None for t in texts]
        run = MethodRun(name, g, texts, answers, [0] * len(items), [False] * len(items), base, 0.0)
        if name == "single":
            run.cost.update(rollouts=1.0, rollout_tokens=sum(sum(i.rollout_tokens) / len(i.rollouts)
                                                             for i in items) / n)
        return run
    engine = getattr(estimator, "engine", None)
    before = engine.stats.snapshot() if engine is not None else None
    groups = [Group(prompt=item.prompt, completions=item.rollouts[:g], question=item.question) for item in items]
    references: list[Reference] = estimator.estimate(groups)
    seconds = time.perf_counter() - start
    if engine is not None:
        delta = _engine_delta(before, engine.stats.snapshot())
        if name in ("min_ppl", "mutual_predictability"):
            base["scored_tokens"] = delta["prompt_tokens"] / n
        else:
            base["extra_generations"] = delta["sequences"] / n
            base["extra_generated_tokens"] = delta["completion_tokens"] / n
            base["extra_prompt_tokens"] = delta["prompt_tokens"] / n
    failed = [bool(r.diagnostics.get("selection_failed", False)) for r in references]
    return MethodRun(
        name,
        g,
        texts=[r.text for r in references],
        answers=[r.answer for r in references],
        choices=[r.diagnostics.get("choice") for r in references],
        failed=failed,
        cost=base,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------------- statistics


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error over questions (sample std / sqrt(n)); SE is 0 for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def disagreement(
    synth_answers: list[str | None],
    synth_correct: list[float],
    other_answers: list[str | None],
    other_correct: list[float],
    matcher: AnswerMatcher,
) -> dict[str, float | int | None]:
    """How often synthesis gives a different final answer than another method, and who is right when they differ.

    Two missing answers agree; a missing and a present answer disagree."""
    idx = [
        i for i, (a, b) in enumerate(zip(synth_answers, other_answers))
        if not ((a is None and b is None) or (a is not None and b is not None and matcher.match(a, b)))
    ]
    n = len(synth_answers)
    return {
        "n": n,
        "n_disagree": len(idx),
        "disagree_share": len(idx) / n if n else None,
        "synthesis_accuracy_when_disagree": (sum(synth_correct[i] for i in idx) / len(idx)) if idx else None,
        "other_accuracy_when_disagree": (sum(other_correct[i] for i in idx) / len(idx)) if idx else None,
    }


def analyses(
    runs: dict[tuple[str, int], MethodRun],
    rollout_correct: list[list[float]],
    matcher: AnswerMatcher,
    gs: Sequence[int],
) -> dict[str, dict[str, Any]]:
    """The paper's Sec. 4.5 numbers at every G (verifiable tasks): synthesis vs majority, synthesis vs Self-BoN,
    synthesis right while every one of the G rollouts is wrong, and pass@G (an upper bound for any selector)."""
    out: dict[str, dict[str, Any]] = {}
    for g in gs:
        entry: dict[str, Any] = {}
        any_right = [1.0 if any(c[:g]) else 0.0 for c in rollout_correct]
        entry["pass_at_g"] = mean_se(any_right)[0]
        synth = runs.get(("synthesis", g))
        if synth is not None:
            for other in ("majority", "self_bon"):
                if (other, g) in runs:
                    o = runs[(other, g)]
                    entry[f"synthesis_vs_{other}"] = disagreement(synth.answers, synth.scores, o.answers, o.scores,
                                                                  matcher)
            rescued = [s == 1.0 and not any(c[:g]) for s, c in zip(synth.scores, rollout_correct)]
            entry["synthesis_correct_all_rollouts_wrong"] = {
                "n": sum(rescued),
                "share": sum(rescued) / len(rescued) if rescued else None,
            }
        out[str(g)] = entry
    return out


def cost_table(runs: dict[tuple[str, int], MethodRun]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and G, per question: generations, generated tokens, prefill and scored tokens, and the ratio of
    generated tokens to one rollout's (the "x less test-time compute" denominator)."""
    single_tokens = next((r.cost["rollout_tokens"] for (m, _), r in runs.items() if m == "single"), None)
    if single_tokens is None and runs:
        any_run = next(iter(runs.values()))
        single_tokens = any_run.cost["rollout_tokens"] / max(any_run.g, 1)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (method, g), run in sorted(runs.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        c = dict(run.cost)
        c["generations"] = c["rollouts"] + c["extra_generations"]
        c["generated_tokens"] = c["rollout_tokens"] + c["extra_generated_tokens"]
        c["generated_tokens_vs_one_rollout"] = c["generated_tokens"] / single_tokens if single_tokens else None
        c["seconds_total"] = run.seconds
        table.setdefault(method, {})[str(g)] = c
    return table


def accuracy_table(runs: dict[tuple[str, int], MethodRun]) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (method, g), run in sorted(runs.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        mean, se = mean_se(run.scores)
        n = len(run.scores)
        table.setdefault(method, {})[str(g)] = {
            "accuracy": mean,
            "se": se,
            "n": n,
            "fallback_rate": sum(run.failed) / n if n else 0.0,
            "no_answer_rate": sum(a is None for a in run.answers) / n if n else 0.0,
        }
    return table


def question_records(
    items: list[PoolItem],
    rollout_answers: list[list[str | None]],
    rollout_correct: list[list[float]],
    runs: dict[tuple[str, int], MethodRun],
) -> list[dict[str, Any]]:
    records = []
    for i, item in enumerate(items):
        methods: dict[str, dict[str, Any]] = {}
        for (method, g), run in runs.items():
            methods.setdefault(method, {})[str(g)] = {
                "score": run.scores[i] if run.scores else None,
                "answer": run.answers[i],
                "choice": run.choices[i],
                "failed": run.failed[i],
                # selections are one of the rollouts (kept once, above); references are new text
                "reference": run.texts[i] if method.startswith("synthesis") else None,
            }
        records.append({
            "index": item.index,
            "problem_id": item.problem_id,
            "question": item.question,
            "gold": item.gold,
            "rollouts": item.rollouts,
            "rollout_tokens": item.rollout_tokens,
            "rollout_answers": rollout_answers[i],
            "rollout_scores": rollout_correct[i],
            "methods": methods,
        })
    return records


def evaluate_pool(
    items: list[PoolItem],
    methods: dict[str, ReferenceEstimator | None],
    gs: Sequence[int],
    scorer,
    matcher: AnswerMatcher,
    extract: Callable[[str], str | None] | None,
    *,
    single_rollouts: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every method at every G on `items`; returns accuracy/cost tables, analyses and per-question records."""
    gs = sorted(set(gs))
    g_max = max(gs)
    if any(len(item.rollouts) < g_max for item in items):
        raise ValueError(f"the pool has fewer than G_max={g_max} rollouts for some question")
    # Rollouts scored once: Single's accuracy (averaged over its first `single_rollouts`) and, for verifiable tasks,
    # the all-wrong / pass@G analyses, which need all G_max of them (answer checks are cheap there). A costly grader
    # (rubric tasks, no such analyses) scores only the rollouts Single uses.
    single_k = min(single_rollouts or g_max, g_max)
    k = g_max if scorer.verifiable else single_k
    flat_items = [item for item in items for _ in range(k)]
    flat_texts = [r for item in items for r in item.rollouts[:k]]
    flat_answers = [extract(t) if extract else None for t in flat_texts]
    flat_scores = scorer.score(flat_items, flat_texts, flat_answers) if items else []
    rollout_answers = [flat_answers[i * k : (i + 1) * k] for i in range(len(items))]
    rollout_correct = [flat_scores[i * k : (i + 1) * k] for i in range(len(items))]

    runs: dict[tuple[str, int], MethodRun] = {}
    plan = [(name, g) for name in methods if name != "single" for g in gs]
    for name, g in _progress(plan, len(plan), "methods x G", progress):
        run = run_method(name, methods[name], items, g)
        run.scores = scorer.score(items, run.texts, run.answers)
        runs[(name, g)] = run
    if "single" in methods:
        single = run_method("single", None, items, 1)
        single.scores = [sum(c[:single_k]) / single_k for c in rollout_correct]
        single.answers = [a[0] for a in rollout_answers]
        for g in gs:  # Single does not depend on G; repeated per G so every table row is complete
            runs[("single", g)] = MethodRun("single", g, single.texts, single.answers, single.choices, single.failed,
                                            dict(single.cost), 0.0, single.scores)
    result = {
        "accuracy": accuracy_table(runs),
        "cost": cost_table(runs),
        "analyses": analyses(runs, rollout_correct, matcher, gs) if scorer.verifiable else {},
        "questions": question_records(items, rollout_answers, rollout_correct, runs),
    }
    return result


def _finite(obj):
    """NaN/inf -> None, so the JSON is standard (json.dumps would write the non-standard `NaN`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(_finite(result), indent=2, default=str)
