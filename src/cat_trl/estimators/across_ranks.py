"""Whole groups across processes.

TRL computes rewards per process on a local slice, and a group of G completions is split across ranks whenever
`per_device_train_batch_size * steps_per_generation` is not a multiple of G. CaT needs every group whole (the anchor
reads all G rollouts), so:

1. every rank gathers all prompts and completions (rank order == sampler order, so groups are contiguous runs of G);
2. groups are dealt out round-robin, each rank estimates its share in ONE estimator call;
3. references are gathered back so every rank can attach the right one to each of its local completions.

`gather_groups`, `estimate_all` and `local_references` are collectives (through `distributed.gather_all`): all ranks
must call them together, in the same order, even with nothing to estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelerate import PartialState

from .base import Group, Reference, ReferenceEstimator
from ..distributed import gather_all
from ..messages import completion_text, question_text


@dataclass
class GatheredBatch:
    """The global batch as every rank sees it after the gather."""

    prompts: list[Any]
    completions: list[str]
    groups: list[Group]
    offset: int  # index of this rank's first local completion in the global batch
    local_size: int
    num_generations: int

    def local_group_index(self, i: int) -> int:
        return (self.offset + i) // self.num_generations


def gather_groups(prompts: list[Any], completions: list[Any], num_generations: int) -> GatheredBatch:
    """Collective. Gathers the local slices and cuts the global batch into groups of G, checking each group."""
    state = PartialState()
    sizes = gather_all([len(prompts)])
    all_prompts = gather_all(list(prompts))
    all_completions = [completion_text(c) for c in gather_all(list(completions))]
    if len(all_prompts) % num_generations:
        raise RuntimeError(
            f"The global batch has {len(all_prompts)} completions, not a multiple of num_generations="
            f"{num_generations}: groups cannot be formed."
        )
    groups = []
    for start in range(0, len(all_prompts), num_generations):
        chunk = all_prompts[start : start + num_generations]
        if any(p != chunk[0] for p in chunk):
            raise RuntimeError(
                f"Completions {start}..{start + num_generations - 1} of the global batch do not share one prompt: "
                "the batch is not laid out in groups of num_generations. This breaks CaT's group contract."
            )
        groups.append(
            Group(
                prompt=chunk[0],
                completions=all_completions[start : start + num_generations],
                question=question_text(chunk[0]),
            )
        )
    return GatheredBatch(
        prompts=all_prompts,
        completions=all_completions,
        groups=groups,
        offset=sum(sizes[: state.process_index]),
        local_size=len(prompts),
        num_generations=num_generations,
    )


def estimate_all(estimator: ReferenceEstimator, groups: list[Group]) -> list[Reference]:
    """Collective. Each rank estimates groups rank, rank+W, ... in one call; every rank gets all references back."""
    state = PartialState()
    world, rank = state.num_processes, state.process_index
    mine = list(range(rank, len(groups), world))
    error = None
    try:
        local = estimator.estimate([groups[g] for g in mine])
        if len(local) != len(mine):
            raise RuntimeError(f"{type(estimator).__name__} returned {len(local)} references for {len(mine)} groups")
    except Exception as err:  # noqa: BLE001 -- re-raised below on every rank, so no rank waits forever
        local, error = [], err
    for ref in local:
        ref.diagnostics.setdefault("rank", rank)
    # Each rank sends (ok, payload): a failure on one rank is raised on all of them instead of hanging the others
    # in the gather.
    outcome = gather_all([(error is None, list(zip(mine, local)) if error is None else f"rank {rank}: {error!r}")])
    failures = [payload for ok, payload in outcome if not ok]
    if failures:
        if error is not None:
            raise RuntimeError(f"Reference estimation failed on {len(failures)} rank(s): {failures}") from error
        raise RuntimeError(f"Reference estimation failed on {len(failures)} rank(s): {failures}")
    pairs = [pair for _, payload in outcome for pair in payload]
    references: list[Reference | None] = [None] * len(groups)
    for g, ref in pairs:
        references[g] = ref
    missing = [g for g, r in enumerate(references) if r is None]
    if missing:
        raise RuntimeError(f"No reference was computed for groups {missing}")
    return references  # type: ignore[return-value]


def local_references(batch: GatheredBatch, references: list[Reference]) -> list[Reference]:
    """The reference of each local completion's group, in local order."""
    return [references[batch.local_group_index(i)] for i in range(batch.local_size)]
