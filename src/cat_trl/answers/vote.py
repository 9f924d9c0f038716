"""Clustering final answers into equivalence classes and the majority vote (TTRL's estimator, CaT's diagnostics)."""

from __future__ import annotations

from .match import AnswerMatcher


def cluster_answers(answers: list[str | None], matcher: AnswerMatcher) -> list[list[int]]:
    """Indices of answers grouped into equivalence classes, ordered by first occurrence.

    Each answer joins the first cluster whose representative (first member) it matches. A dict on `matcher.key`
    comes first, so string-equal answers never reach math-verify and `string` mode is a single pass. None answers,
    and answers that normalise to "", belong to no cluster.
    """
    clusters: list[list[int]] = []
    by_key: dict[str, int] = {}
    for i, answer in enumerate(answers):
        k = matcher.key(answer)
        if not k:
            continue
        c = by_key.get(k)
        if c is None and matcher.mode != "string":
            c = next((j for j, cl in enumerate(clusters) if matcher.match(answers[cl[0]], answer)), None)
        if c is None:
            c = len(clusters)
            clusters.append([])
        clusters[c].append(i)
        by_key[k] = c
    return clusters


def majority_answer(
    answers: list[str | None], matcher: AnswerMatcher
) -> tuple[str | None, int, list[list[int]]]:
    """(representative of the largest cluster, its size, all clusters). Ties go to the cluster seen first, so the
    vote is deterministic given the rollout order. No answers at all gives (None, 0, [])."""
    clusters = cluster_answers(answers, matcher)
    if not clusters:
        return None, 0, []
    best = max(clusters, key=len)  # `max` keeps the first of equal sizes: earliest first occurrence wins
    return answers[best[0]], len(best), clusters
