"""Transformers engine: the anchor (or judge) runs with `model.generate` on weights already in the process.

Three ways to get the frozen initial policy pi_0 without touching the trained weights:

* `peft_base`  -- the PEFT policy with its adapter disabled (TRL's `use_adapter(model, None)`; a pretrained adapter
  that TRL copied into a frozen `"ref"` adapter is used instead). No extra weight memory.
* `ref_model`  -- TRL's own reference model, which exists when `beta > 0` without PEFT. No extra weight memory, but
  only valid while `sync_ref_model` is off (otherwise it drifts towards the policy and stops being pi_0).
* `copy`       -- a separately loaded frozen copy (full fine-tuning with `beta == 0`, or a different anchor model).

The engine never holds the model itself for the first two: it holds a *provider*, a context manager factory that
unwraps the distributed wrapper (DDP / ZeRO-3 gather) for the duration of one call, exactly as TRL does for its own
generation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
)

from .base import (
    Conversation,
    Engine,
    Generation,
    SamplingSettings,
    TokenizerBudget,
    first_token_ids,
)

ModelProvider = Callable[[], contextlib.AbstractContextManager[PreTrainedModel]]


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """pi_0 is the initial policy *as a sampler*: dropout off, no autograd, training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


class _StopOnGeneratedText(StoppingCriteria):
    """Stop strings matched on the *generated* text only (as vLLM and OpenAI servers do); transformers' own
    `stop_strings` also match across the end of the prompt."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, stops, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def _cut_at_stop(tokenizer, tokens: list[int], stops: tuple[str, ...]) -> list[int] | None:
    """The shortest token prefix whose text contains a stop string, or None."""
    if not stops or not any(s in tokenizer.decode(tokens, skip_special_tokens=True) for s in stops):
        return None
    for n in range(1, len(tokens) + 1):
        if any(s in tokenizer.decode(tokens[:n], skip_special_tokens=True) for s in stops):
            return tokens[:n]
    return None


class TransformersEngine(TokenizerBudget, Engine):
    """Batched chat generation and continuation log-probs with `transformers`.

    Args:
        model: a model, or a provider returning a context manager that yields the model for the duration of a call.
        tokenizer: the model's tokenizer (with a chat template).
        batch_size: sequences per `generate` micro-batch (bounds activation memory); None = the whole call at once.
        max_context_tokens: context window; defaults to the config's `max_position_embeddings`.
        name: recorded in logs.
        collective: the model is sharded across ranks (FSDP, ZeRO-3): every forward pass is a collective, so every
            rank must run the same number of micro-batches -- also with nothing to do. Calls are then padded with
            no-op micro-batches to the largest count over ranks, and `generate` runs with `synced_gpus`. All ranks
            must call the engine the same number of times (the estimators, proposer and judge always call it).
    """

    def __init__(
        self,
        model: PreTrainedModel | ModelProvider,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int | None = None,
        max_context_tokens: int | None = None,
        name: str | None = None,
        collective: bool = False,
    ):
        super().__init__()
        self.collective = collective
        if isinstance(model, torch.nn.Module):
            frozen = model
            self._provider: ModelProvider = lambda: contextlib.nullcontext(frozen)
            config = getattr(model, "config", None)
        else:
            self._provider = model
            config = None
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.batch_size = batch_size
        #: next_token_logprobs: reuse the KV cache of a prefix shared by several prompts (judge criteria)
        self.share_prefixes = True
        self.min_shared_prefix = 16
        if max_context_tokens is None and config is not None:
            max_context_tokens = getattr(config, "max_position_embeddings", None)
        self._max_context = max_context_tokens
        self.name = name or (getattr(config, "_name_or_path", None) or "transformers")

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> TransformersEngine:
        """A separately loaded, frozen copy (`copy` anchor mode).

        `load_kwargs` go to both `from_pretrained` calls that accept them (`revision`, `trust_remote_code`) and the
        model's (`attn_implementation`, ...): the anchor must be loaded exactly like the policy was."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load_kwargs = dict(load_kwargs or {})
        load_kwargs.pop("dtype", None)
        load_kwargs.pop("torch_dtype", None)
        load_kwargs.pop("device_map", None)  # placed on `device` below
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_kwargs)
        if device is not None:
            model.to(device)
        model.eval().requires_grad_(False)
        tok_kwargs = {k: load_kwargs[k] for k in ("revision", "trust_remote_code") if k in load_kwargs}
        tokenizer = AutoTokenizer.from_pretrained(path, **tok_kwargs)
        return cls(model, tokenizer, name=kwargs.pop("name", path), **kwargs)

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context

    @contextlib.contextmanager
    def _model(self) -> Iterator[PreTrainedModel]:
        with self._provider() as model, _eval_mode(model):
            yield model

    # ---------------------------------------------------------------- tokenisation

    def _eos_ids(self, model: PreTrainedModel) -> list[int]:
        ids: set[int] = set()
        for source in (model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update(source if isinstance(source, list) else [source])
        return sorted(ids)

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        conversations: list[Conversation],
        sampling: SamplingSettings,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[Generation]:
        if not conversations and not self.collective:
            return []
        with self.counted_call() as call:
            prompts = [self._prompt_ids(c, chat_template_kwargs) for c in conversations]
            # Sort by length so each micro-batch pads little; results are put back in the caller's order.
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            results: list[Generation | None] = [None] * len(prompts)
            with self._model() as model, self._seeded(model, sampling.seed):
                eos = self._eos_ids(model)
                config = self._generation_config(sampling, eos)
                for idx in self._plan(order):
                    if idx is None:  # no-op micro-batch: keeps this rank in step with the others
                        self._generate_batch(model, [self._noop_prompt()], config, eos)
                        continue
                    batch = [prompts[i] for i in idx]
                    for i, gen in zip(idx, self._generate_batch(model, batch, config, eos, sampling.stop)):
                        results[i] = gen
            call.generated(results)
        return results  # type: ignore[return-value]

    def _plan(self, order: list[int]) -> list[list[int] | None]:
        """Micro-batches over `order`; in collective mode padded with `None` (no-op) to the largest count of any
        rank. The count exchange is itself a collective, made on every call."""
        size = self.batch_size or max(len(order), 1)
        batches: list[list[int] | None] = [order[b : b + size] for b in range(0, len(order), size)]
        if self.collective:
            from ..distributed import gather_all

            target = max(gather_all([len(batches)]))
            padding = target - len(batches)
            batches += [None] * padding
            self.stats.extra["noop_batches"] = self.stats.extra.get("noop_batches", 0) + padding
        return batches

    def _noop_prompt(self) -> list[int]:
        return self._prompt_ids([{"role": "user", "content": "."}], None)

    @contextlib.contextmanager
    def _seeded(self, model: PreTrainedModel, seed: int | None) -> Iterator[None]:
        """Seeds this call only: the policy's RNG streams (CPU and the model's GPU) are restored afterwards."""
        if seed is None:
            yield
            return
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield

    def _shared_prefix_logits(self, model, device, pad, prompts, groups, record) -> None:
        """Next-token logits for prompt `groups` [(shared length, member indices)]: per micro-batch of groups, one
        forward over their prefixes (left-padded, cached), the cache rows repeated per member, then one forward over
        all members' suffixes. Exact: every suffix token attends to its own prefix and its own earlier
        tokens only, and logits are read at each row's last real token."""
        import inspect

        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        sliding = _uses_sliding_window(model.config)
        size = self.batch_size or sum(len(m) for _, m in groups)
        chunks: list[list[tuple[int, list[int]]]] = [[]]
        for group in groups:
            if chunks[-1] and sum(len(m) for _, m in chunks[-1]) + len(group[1]) > size:
                chunks.append([])
            chunks[-1].append(group)
        for chunk in chunks:
            width = max(shared for shared, _ in chunk)
            prefix_ids = torch.tensor([[pad] * (width - sh) + prompts[m[0]][:sh] for sh, m in chunk], device=device)
            prefix_mask = torch.tensor([[0] * (width - sh) + [1] * sh for sh, _ in chunk], device=device)
            positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            rows = [k for k, (_, members) in enumerate(chunk) for _ in members]
            cache.batch_select_indices(torch.tensor(rows, device=device))
            members = [(i, sh) for sh, m in chunk for i in m]
            suffixes = [prompts[i][sh:] for i, sh in members]
            wide = max(len(x) for x in suffixes)
            # Suffixes are left-padded (padding between prefix and suffix, masked out, positions continuing the
            # prefix's), so every row's last real token is the last column and only its logits are computed. A
            # sliding-window mask counts cache slots, not positions, so windowed models pad on the right instead and
            # keep all suffix logits.
            leads = [0 if sliding else wide - len(x) for x in suffixes]
            ids = torch.tensor([[pad] * lead + x + [pad] * (wide - len(x) - lead) for lead, x in zip(leads, suffixes)],
                               device=device)
            suffix_mask = torch.tensor([[0] * lead + [1] * len(x) + [0] * (wide - len(x) - lead)
                                        for lead, x in zip(leads, suffixes)], device=device)
            positions = torch.tensor([[sh + max(0, j - lead) for j in range(wide)]
                                      for (_, sh), lead in zip(members, leads)], device=device)
            keep = 0 if sliding else 1
            mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=keep, **{cache_arg: cache}).logits
            for row, ((i, _), x) in enumerate(zip(members, suffixes)):
                record(i, logits[row, len(x) - 1 if sliding else -1])

    def _generation_config(self, sampling: SamplingSettings, eos: list[int]) -> GenerationConfig:
        greedy = sampling.temperature == 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            repetition_penalty=sampling.repetition_penalty,
        )
        if sampling.min_new_tokens:
            kwargs["min_new_tokens"] = sampling.min_new_tokens
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
            if sampling.min_p is not None:
                kwargs["min_p"] = sampling.min_p
        return GenerationConfig(**kwargs)

    def _generate_batch(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        config: GenerationConfig,
        eos: list[int],
        stops: tuple[str, ...] = (),
    ) -> list[Generation]:
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        criteria = [_StopOnGeneratedText(self.tokenizer, stops, width)] if stops else None
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=criteria,
            **({"synced_gpus": True} if self.collective else {}),
        )
        generations = []
        for prompt, row in zip(prompts, out[:, width:].tolist()):
            stop_at = next((j for j, t in enumerate(row) if t in eos), None)
            tokens = row if stop_at is None else row[:stop_at]
            tokens = [t for t in tokens if t != pad] if stop_at is None else tokens
            finish = "stop" if stop_at is not None or len(row) < config.max_new_tokens else "length"
            stopped = _cut_at_stop(self.tokenizer, tokens, stops)
            if stopped is not None:
                tokens, finish = stopped, "stop"
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            generations.append(Generation(text, len(prompt), len(tokens), finish))
        return generations

    # ---------------------------------------------------------------- log-probabilities

    def logprobs(
        self,
        conversations: list[Conversation],
        continuations: list[str],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        if len(conversations) != len(continuations):
            raise ValueError(f"{len(conversations)} conversations but {len(continuations)} continuations")
        if not conversations and not self.collective:
            return []
        with self.counted_call() as call:
            pairs = []
            for conv, cont in zip(conversations, continuations):
                prompt = self._prompt_ids(conv, chat_template_kwargs)
                pairs.append((prompt, self.tokenizer(cont, add_special_tokens=False)["input_ids"]))
            order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
            results: list[list[float]] = [[] for _ in pairs]
            with self._model() as model:
                device = next(model.parameters()).device
                pad = self.tokenizer.pad_token_id
                for idx in self._plan(order):
                    if idx is None:
                        model(input_ids=torch.tensor([self._noop_prompt()], device=device))
                        continue
                    seqs = [pairs[i][0] + pairs[i][1] for i in idx]
                    width = max(len(s) for s in seqs)
                    # Left padding puts every continuation at the right edge, so only the last `keep` positions need
                    # logits (vocab x prompt length is never materialised), and log p = logit - logsumexp avoids a
                    # full log-softmax tensor (faster than right padding + log-softmax: benchmarks/run.py measures it).
                    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
                    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    longest = max(len(pairs[i][1]) for i in idx)
                    if longest == 0:  # nothing to score; a sharded model still takes part in the collective forward
                        if self.collective:
                            model(input_ids=torch.tensor([self._noop_prompt()], device=device))
                        continue
                    keep = longest + 1
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   logits_to_keep=keep).logits
                    logits = logits[:, :-1]  # position t predicts token t + 1: the last kept position predicts nothing
                    targets = ids[:, width - longest :]
                    for row, i in enumerate(idx):
                        # Row by row, and only the row's own continuation positions: the float32 copy logsumexp needs
                        # is continuation x vocab, never batch x longest x vocab (GBs at 150k vocab, 1.5k tokens).
                        c = len(pairs[i][1])
                        if not c:
                            results[i] = []
                            continue
                        row_logits = logits[row, longest - c :]
                        picked = row_logits.gather(-1, targets[row, longest - c :, None]).squeeze(-1).float()
                        results[i] = (picked - torch.logsumexp(row_logits.float(), dim=-1)).tolist()
            call.scored(len(pairs), sum(len(p) + len(c) for p, c in pairs))
        return results

    def next_token_logprobs(
        self,
        conversations: list[Conversation],
        candidates: tuple[str, ...],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[dict[str, float]]:
        if not conversations and not self.collective:
            return []
        with self.counted_call() as call:
            first = first_token_ids(self.tokenizer, candidates)
            prompts = [self._prompt_ids(c, chat_template_kwargs) for c in conversations]
            results: list[dict[str, float]] = [{} for _ in prompts]

            def record(i: int, logits: torch.Tensor) -> None:
                logps = torch.log_softmax(logits.float(), dim=-1)
                results[i] = {cand: torch.logsumexp(logps[sorted(first[cand])], dim=0).item() for cand in candidates}

            # A judge asks n criteria about the same (conversation, response): those prompts share a long token prefix.
            # Its KV cache is computed once and reused for every suffix (criterion + question). Sharded (collective)
            # models keep the plain path, whose forward count is padded across ranks.
            shareable = self.share_prefixes and not self.collective
            groups = _prefix_groups(prompts, self.min_shared_prefix) if shareable else []
            grouped = {i for _, members in groups for i in members}
            order = sorted((i for i in range(len(prompts)) if i not in grouped), key=lambda i: len(prompts[i]))
            with self._model() as model:
                device = next(model.parameters()).device
                pad = self.tokenizer.pad_token_id
                if groups:
                    self._shared_prefix_logits(model, device, pad, prompts, groups, record)
                    self.stats.extra["shared_prefix_tokens_saved"] = self.stats.extra.get(
                        "shared_prefix_tokens_saved", 0) + sum(shared * (len(m) - 1) for shared, m in groups)
                for idx in self._plan(order):
                    if idx is None:
                        model(input_ids=torch.tensor([self._noop_prompt()], device=device))
                        continue
                    width = max(len(prompts[i]) for i in idx)
                    # Left padding: the next-token distribution of every row sits in the last column.
                    ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx], device=device)
                    mask = torch.tensor(
                        [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx], device=device
                    )
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    # logits_to_keep=1: only the last position's logits are materialised (vocab x length would not fit).
                    logits = model(
                        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
                    ).logits[:, -1]
                    for row, i in enumerate(idx):
                        record(i, logits[row])
            call.scored(len(prompts), sum(len(p) for p in prompts))
        return results


def _uses_sliding_window(config) -> bool:
    """Whether any attention layer is windowed (Mistral, Gemma 2/3, gpt-oss; Qwen's configs carry a window they do
    not use)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        return any("sliding" in str(t) for t in layer_types)
    if getattr(text, "use_sliding_window", True) is False:
        return False
    return bool(getattr(text, "sliding_window", None))


def _prefix_groups(prompts: list[list[int]], min_shared: int) -> list[tuple[int, list[int]]]:
    """(shared length, member indices) for runs of prompts that share at least `min_shared` leading tokens (and
    more than half of the shortest member), found by sorting the token lists so that such prompts are adjacent.
    Every member keeps at least one token of its own. Prompts in no group are left out."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[tuple[int, list[int]]] = []
    members: list[int] = []
    shared = 0

    def close():
        if len(members) > 1:
            groups.append((shared, list(members)))

    for i in order:
        if members:
            ref = prompts[members[0]]
            limit = min(shared, len(prompts[i]) - 1)
            n = 0
            while n < limit and ref[n] == prompts[i][n]:
                n += 1
            shortest = min(len(prompts[m]) for m in members + [i])
            if n >= min_shared and 2 * n > shortest:
                shared = n
                members.append(i)
                continue
            close()
        members, shared = [i], len(prompts[i]) - 1
    close()
    return groups
