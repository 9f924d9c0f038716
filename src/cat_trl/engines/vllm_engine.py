"""A `vllm.LLM` behind the `Engine` interface: generation, continuation log-probs and next-token log-probs.

`VLLMEngine` is the standalone engine (`EngineSpec("vllm", model=...)` without a trainer): `cat-trl eval`'s pool and
methods, `healthbench-eval`'s policy and compare's initial scoring decode with it when vLLM is installed. The
time-shared engines on TRL's colocated `LLM` (the anchor, the live policy for held-out scoring) subclass it in
`vllm_colocated.py` and override only `_run` (borrow the engine, load the right weights, give it back): how requests
are built and how vLLM's outputs are read back exists once, here.

The calls are the ones TRL 1.16 makes (`trl/generation/vllm_generation.py`): `generate` on token-id prompts with
`SamplingParams`, rendered with the model's own chat template by its Hugging Face tokenizer (exactly as the
transformers engine renders them, so budgets and prompts agree token for token). Micro-batching is vLLM's own.

Seeds: a seeded call gives request i its own seed derived from (call seed, i). vLLM seeds per request, so one seed for
all would make the G identical prompts of a pool sample G identical rollouts. On vLLM's CPU build a seeded request
must never be prefilled in chunks (vLLM then rewinds its generator, which only CUDA's supports: the engine core dies;
`trl_compat.vllm_seeded_prefill_limits`), so there a seeded call is cut into waves whose prompts fit one scheduler
step (`seeded_waves`); request i keeps its seed whichever wave it lands in.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .base import Conversation, Engine, Generation, SamplingSettings, TokenizerBudget, first_token_ids

logger = logging.getLogger(__name__)

#: top log-probs asked of vLLM for next-token scoring (vLLM's default `max_logprobs`); a candidate token outside them
#: is scored exactly by a second, prompt-log-prob request
NEXT_TOKEN_TOP_K = 20

#: `vllm.LLM` arguments the standalone engine sets from its own settings
STANDALONE_RESERVED = frozenset({"model", "tokenizer", "dtype", "max_model_len", "seed"})


def seeded_waves(lengths: list[int], limits: tuple[int, int] | None) -> list[range]:
    """Consecutive waves of request indices, each prefilled whole in one vLLM scheduler step: per wave, the prompt
    tokens plus one token per request (a request left for the next step then shares it with the others' decodes) stay
    within the step's token budget, and the requests within `max_num_seqs`. `limits` None: one wave.

    Raises:
        ValueError: a single prompt longer than the budget (vLLM would have to chunk it)."""
    if limits is None or not lengths:
        return [range(len(lengths))] if lengths else []
    tokens, seqs = limits
    waves, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if n > tokens:
            raise ValueError(
                f"a seeded vLLM request has a {n}-token prompt, over the engine's {tokens}-token scheduler budget: "
                "vLLM's CPU build cannot prefill a seeded request in chunks (its generator cannot be rewound). Raise "
                "max_num_batched_tokens to at least the context length (cat_vllm_llm_kwargs for TRL's colocated "
                "engine, vllm_llm_kwargs for eval's), shorten the prompt, or sample unseeded.")
        if i > start and (total + n + 1 > tokens or i - start >= seqs):
            waves.append(range(start, i))
            start, total = i, 0
        total += n + 1
    waves.append(range(start, len(lengths)))
    return waves


def request_seed(seed: int, index: int) -> int:
    """Request `index`'s seed in a call seeded `seed`: distinct per request, reproducible per call, in vLLM's range."""
    return (seed * 1_000_003 + index) % (2**31 - 1)


class VLLMEngine(TokenizerBudget, Engine):
    """An in-process `vllm.LLM` (one per process: vLLM supports no second engine beside it).

    Args:
        llm: the `vllm.LLM`.
        tokenizer: the model's Hugging Face tokenizer (renders the chat template).
        max_model_len: the context window (read from the engine when None).
        name: recorded in logs.
        sampling_params_cls: `vllm.SamplingParams` (injectable for tests).
    """

    collective = False

    def __init__(self, llm, tokenizer, *, max_model_len: int | None = None, name: str = "vllm",
                 sampling_params_cls=None):
        super().__init__()
        self._llm = llm
        self.tokenizer = tokenizer
        self.name = name
        if sampling_params_cls is None:
            from vllm import SamplingParams as sampling_params_cls  # noqa: N813
        self.sampling_params_cls = sampling_params_cls
        if max_model_len is None:
            from ..trl_compat import vllm_max_model_len

            max_model_len = vllm_max_model_len(self.llm)
        self._max_context = max_model_len

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "auto", max_context: int | None = None, seed: int = 0,
                        llm_kwargs: dict[str, Any] | None = None, name: str | None = None) -> VLLMEngine:
        """A new `vllm.LLM` on checkpoint `path`. `llm_kwargs` are further `vllm.LLM` arguments
        (`gpu_memory_utilization`, `tensor_parallel_size`, `enforce_eager`, ...). On vLLM's CPU build the engine runs
        eager unless told otherwise: its torch.compile warm-up takes minutes on a few cores."""
        from transformers import AutoTokenizer
        from vllm import LLM

        from ..trl_compat import TRL_COLOCATE_STEP_TOKENS, vllm_runs_on_cpu

        extra = dict(llm_kwargs or {})
        reserved = sorted(STANDALONE_RESERVED & set(extra))
        if reserved:
            raise ValueError(f"vllm_llm_kwargs may not set {', '.join(reserved)}: the engine sets them from its own "
                             "settings (model_name_or_path, dtype, max_context, seed)")
        if vllm_runs_on_cpu():
            extra.setdefault("enforce_eager", True)
            # a whole prompt fits one scheduler step (at least TRL's), so a seeded request is never chunked (see the
            # module docstring)
            if max_context:
                extra.setdefault("max_num_batched_tokens", max(TRL_COLOCATE_STEP_TOKENS, max_context))
        kwargs = {"model": path, "dtype": dtype, "seed": seed, **extra}
        if max_context:
            kwargs["max_model_len"] = max_context
        logger.info("vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"} | {"model": path})
        llm = LLM(**kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(llm, tokenizer, name=name or f"vllm:{path}")

    @property
    def llm(self):
        return self._llm

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context

    # ------------------------------------------------------------------ requests

    def _params(self, sampling: SamplingSettings, n_requests: int, **extra):
        """One `SamplingParams` for the call, or one per request when the call is seeded (see the module docstring)."""
        kwargs = dict(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=0.0 if sampling.min_p is None else sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_new_tokens,
            stop=list(sampling.stop) or None,
            # the stop string stays in the text, as the transformers engine keeps it
            include_stop_str_in_output=bool(sampling.stop),
        )
        kwargs.update(extra)
        if sampling.seed is None:
            return self.sampling_params_cls(**kwargs, seed=None)
        return [self.sampling_params_cls(**kwargs, seed=request_seed(sampling.seed, i)) for i in range(n_requests)]

    def _run(self, prompt_ids: list[list[int]], sampling: SamplingSettings, **extra) -> list[Any]:
        """One `generate` over token-id prompts; outputs in the prompts' order. Subclasses on a shared engine wrap it."""
        if not prompt_ids:
            return []
        params = self._params(sampling, len(prompt_ids), **extra)
        if not isinstance(params, list):
            return self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params,
                                     use_tqdm=False)
        from ..trl_compat import vllm_seeded_prefill_limits

        waves = seeded_waves([len(ids) for ids in prompt_ids], vllm_seeded_prefill_limits(self.llm))
        if len(waves) > 1:
            self.stats.extra["seeded_waves"] = self.stats.extra.get("seeded_waves", 0) + len(waves)
        outputs: list[Any] = []
        for wave in waves:
            outputs += self.llm.generate([{"prompt_token_ids": prompt_ids[i]} for i in wave],
                                         sampling_params=[params[i] for i in wave], use_tqdm=False)
        return outputs

    # ------------------------------------------------------------------ the Engine interface

    def generate(
        self,
        conversations: list[Conversation],
        sampling: SamplingSettings,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[Generation]:
        with self.counted_call() as call:
            prompt_ids = [self._prompt_ids(c, chat_template_kwargs) for c in conversations]
            outputs = self._run(prompt_ids, sampling)
            results = []
            for ids, out in zip(prompt_ids, outputs):
                completion = out.outputs[0]
                text = completion.text if getattr(completion, "text", None) is not None else self.tokenizer.decode(
                    completion.token_ids, skip_special_tokens=True)
                results.append(Generation(text=text, prompt_tokens=len(ids),
                                          completion_tokens=len(completion.token_ids),
                                          finish_reason=completion.finish_reason or "stop"))
            call.generated(results)
        return results

    def logprobs(
        self,
        conversations: list[Conversation],
        continuations: list[str],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        """Continuation log-probs via vLLM's `prompt_logprobs` (one prefill, one dummy decoded token)."""
        if len(conversations) != len(continuations):
            raise ValueError(f"{len(conversations)} conversations but {len(continuations)} continuations")
        with self.counted_call() as call:
            pairs = [(self._prompt_ids(c, chat_template_kwargs),
                      self.tokenizer(t, add_special_tokens=False)["input_ids"])
                     for c, t in zip(conversations, continuations)]
            outputs = self._run([p + c for p, c in pairs], _GREEDY_ONE, prompt_logprobs=0)
            results = [[_prompt_logprob(out, len(p) + k, token) for k, token in enumerate(c)]
                       for (p, c), out in zip(pairs, outputs)]
            call.scored(len(pairs), sum(len(p) + len(c) for p, c in pairs))
        return results

    def next_token_logprobs(
        self,
        conversations: list[Conversation],
        candidates: tuple[str, ...],
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[dict[str, float]]:
        """As `TransformersEngine.next_token_logprobs`: the log-probability that the reply starts with each
        candidate (its spellings' distinct first tokens pooled). Read from the top `NEXT_TOKEN_TOP_K` log-probs of a
        one-token greedy request; a first token outside them is scored exactly with a prompt-log-prob request on
        prompt + that token, so the result never depends on the top-k cut."""
        with self.counted_call() as call:
            first = first_token_ids(self.tokenizer, candidates)
            prompts = [self._prompt_ids(c, chat_template_kwargs) for c in conversations]
            outputs = self._run(prompts, _GREEDY_ONE, logprobs=NEXT_TOKEN_TOP_K)
            wanted = sorted(set().union(*first.values()))
            found: list[dict[int, float]] = []
            missing: list[tuple[int, int]] = []
            for i, out in enumerate(outputs):
                tops = (out.outputs[0].logprobs or [{}])[0] or {}
                row = {t: _value(tops[t]) for t in wanted if t in tops}
                found.append(row)
                missing += [(i, t) for t in wanted if t not in row]
            if missing:  # exact log-prob of a token outside the top-k: the prompt's last position, with it appended
                extra = self._run([prompts[i] + [t] for i, t in missing], _GREEDY_ONE, prompt_logprobs=0)
                for (i, t), out in zip(missing, extra):
                    found[i][t] = _prompt_logprob(out, len(prompts[i]), t)
            results = [{cand: _logsumexp([row[t] for t in sorted(first[cand])]) for cand in candidates}
                       for row in found]
            call.scored(len(prompts) + len(missing), sum(len(p) for p in prompts))
            self.stats.extra["next_token_exact_requests"] = self.stats.extra.get(
                "next_token_exact_requests", 0) + len(missing)
        return results


_GREEDY_ONE = SamplingSettings(max_new_tokens=1, temperature=0.0)


def _value(logprob) -> float:
    return float(getattr(logprob, "logprob", logprob))


def _prompt_logprob(output, position: int, token: int) -> float:
    """The log-prob vLLM reported for prompt token `token` at `position` (-inf when it reported none)."""
    per_position = output.prompt_logprobs or []
    entry = per_position[position] if position < len(per_position) else None
    lp = entry.get(token) if entry else None
    return _value(lp) if lp is not None else float("-inf")


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == float("-inf"):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))
