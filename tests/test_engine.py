"""Tests for cat_trl.engines: `SamplingSettings`, the `Engine` token helpers and `TransformersEngine`.

Real models only: the tiny random Llama (real SmolLM2 tokenizer and chat template) for batching, ordering, seeding,
log-probabilities and PEFT, and the real SmolLM2-135M-Instruct checkpoint for one short greedy answer.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cat_trl.engines import (
    TRUNCATION_MARK,
    Engine,
    Generation,
    SamplingSettings,
    TransformersEngine,
)

GREEDY = SamplingSettings(max_new_tokens=8, temperature=0.0)

# Very different prompt lengths, deliberately NOT in length order: the engine sorts by length internally and must put
# the results back in the caller's order.
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {
            "role": "user",
            "content": "Explain in great detail the history of the Roman empire, its emperors, its wars and its "
            "fall, with dates and the names of the main battles. " * 3,
        }
    ],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Tell me a joke about cats."}],
    [{"role": "user", "content": "What is 2+2?"}],
]


def _spread_weights(model: torch.nn.Module, std: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Redraws the tiny model's projection matrices at a larger scale.

    At its init scale (std 0.02, tied embeddings) the residual stream is dominated by the current token's embedding,
    so greedy decoding repeats the last prompt token ("\\n\\n\\n...") whatever the prompt: order and equality checks
    on such outputs would be vacuous. With std 0.1 each prompt gets its own continuation.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and "embed" not in name:
                weight.normal_(0.0, std, generator=gen)
    return model


def _load_tiny(path: str, spread: bool = True) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return (_spread_weights(model) if spread else model).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return _load_tiny(tiny_model_path)


@pytest.fixture
def engine(tiny, tokenizer):
    return TransformersEngine(tiny, tokenizer)


def _template_ids(tokenizer, conversation) -> list[int]:
    """Prompt ids straight from the chat template (a different code path from the engine's text-then-tokenize)."""
    return list(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=True)["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# SamplingSettings
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_sampling_settings_rejects_invalid_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingSettings(**kwargs)


def test_sampling_settings_accepts_boundaries_and_is_frozen():
    s = SamplingSettings(max_new_tokens=1, temperature=0.0, top_p=1.0, top_k=0)
    assert s.to_dict()["max_new_tokens"] == 1 and s.to_dict()["temperature"] == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.temperature = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"min_p": 1.5}, {"min_p": -0.1}, {"repetition_penalty": 0.0},
                                    {"min_new_tokens": -1}, {"max_new_tokens": 4, "min_new_tokens": 5}])
def test_sampling_settings_rejects_invalid_min_p_and_repetition_penalty(kwargs):
    with pytest.raises(ValueError):
        SamplingSettings(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# generate: order, batching, lengths, stats
# ---------------------------------------------------------------------------------------------------------------
def test_generate_returns_one_generation_per_conversation_in_caller_order(engine, tokenizer):
    lengths = [len(_template_ids(tokenizer, c)) for c in CONVERSATIONS]
    assert lengths != sorted(lengths) and len(set(lengths)) == len(lengths)  # the engine must really reorder

    batched = engine.generate(CONVERSATIONS, GREEDY)
    singles = [engine.generate([c], GREEDY)[0] for c in CONVERSATIONS]

    assert len(batched) == len(CONVERSATIONS) and all(isinstance(g, Generation) for g in batched)
    # Distinct outputs, so any permutation of the results would be caught below.
    assert len({g.text for g in singles}) == len(CONVERSATIONS)
    # Left padding in a batch must not change greedy decoding (float32, exact).
    assert [g.text for g in batched] == [g.text for g in singles]
    assert [g.prompt_tokens for g in batched] == lengths
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in singles]


def test_micro_batches_give_the_same_greedy_outputs(tiny, tokenizer, engine):
    whole = engine.generate(CONVERSATIONS, GREEDY)
    micro = TransformersEngine(tiny, tokenizer, batch_size=3).generate(CONVERSATIONS, GREEDY)
    assert [g.text for g in micro] == [g.text for g in whole]


def test_generate_empty_input(engine):
    assert engine.generate([], GREEDY) == []
    assert engine.stats.calls == 0


def test_max_new_tokens_is_respected_and_cut_generations_report_length(engine):
    long = engine.generate(CONVERSATIONS, SamplingSettings(max_new_tokens=8, temperature=0.0))
    short = engine.generate(CONVERSATIONS, SamplingSettings(max_new_tokens=3, temperature=0.0))
    for g_long, g_short in zip(long, short):
        assert g_short.completion_tokens == 3  # this model never emits EOS this early: every sequence is cut
        assert g_short.finish_reason == "length"
        assert g_long.completion_tokens <= 8
        # Greedy: the 3-token completion is the start of the 8-token one.
        assert g_long.text.startswith(g_short.text) and len(g_short.text) < len(g_long.text)


def test_min_new_tokens_forces_the_length_a_real_model_would_not_reach(embedded_model_path):
    """SmolLM2 answers "Say hi." in a few tokens and stops; with min_new_tokens it may not stop before (what the
    benchmarks use to force synthesis lengths)."""
    from cat_trl.engines.factory import EngineSpec, build_engine

    engine = build_engine(EngineSpec("transformers", model=embedded_model_path, dtype="float32", device="cpu"))
    hi = [[{"role": "user", "content": "Say hi."}]]
    free = engine.generate(hi, SamplingSettings(max_new_tokens=40, temperature=0.0))[0]
    forced = engine.generate(hi, SamplingSettings(max_new_tokens=40, min_new_tokens=30, temperature=0.0))[0]
    assert free.completion_tokens < 30 and free.finish_reason == "stop"
    assert forced.completion_tokens >= 30


def test_stop_string_ends_generation_with_finish_reason_stop(engine):
    conv = CONVERSATIONS[:1]
    prefixes = [engine.generate(conv, SamplingSettings(max_new_tokens=k, temperature=0.0))[0].text for k in range(1, 7)]
    # The first generated token (after the 2nd) whose text is new: stopping on it must end generation right there.
    k = next(k for k in range(2, 6) if len(prefixes[k][len(prefixes[k - 1]) :].strip()) >= 3
             and prefixes[k][len(prefixes[k - 1]) :] not in prefixes[k - 1])
    stop = prefixes[k][len(prefixes[k - 1]) :]
    out = engine.generate(conv, SamplingSettings(max_new_tokens=10, temperature=0.0, stop=(stop,)))[0]
    assert out.finish_reason == "stop"
    assert out.completion_tokens == k + 1 < 10
    assert out.text == prefixes[k] and out.text.endswith(stop)


def test_stop_string_only_matches_generated_text(tiny_model_path, tokenizer):
    # The unmodified tiny model greedily repeats "\n" after the assistant header (which itself ends in "\n").
    plain = TransformersEngine(_load_tiny(tiny_model_path, spread=False), tokenizer)
    cut = plain.generate(CONVERSATIONS[:1], SamplingSettings(max_new_tokens=10, temperature=0.0))[0]
    assert cut.text == "\n" * 10 and cut.finish_reason == "length"
    stopped = plain.generate(CONVERSATIONS[:1], SamplingSettings(max_new_tokens=10, temperature=0.0, stop=("\n\n",)))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == "\n\n" and stopped.completion_tokens == 2


def test_stats_counters_add_up(engine, tokenizer):
    a = engine.generate(CONVERSATIONS, SamplingSettings(max_new_tokens=4, temperature=0.0))
    b = engine.generate(CONVERSATIONS[1:3], SamplingSettings(max_new_tokens=2, temperature=0.0))
    s = engine.stats
    assert s.calls == 2
    assert s.sequences == len(CONVERSATIONS) + 2
    expected_prompt = sum(len(_template_ids(tokenizer, c)) for c in CONVERSATIONS + CONVERSATIONS[1:3])
    assert s.prompt_tokens == expected_prompt == sum(g.prompt_tokens for g in a + b)
    assert s.completion_tokens == 4 * len(CONVERSATIONS) + 2 * 2 == sum(g.completion_tokens for g in a + b)
    assert s.seconds > 0
    snap = s.snapshot()
    assert snap["calls"] == 2 and snap["sequences"] == 6 and snap["prompt_tokens"] == expected_prompt

    engine.logprobs(CONVERSATIONS[:2], ["a b", "c"])
    assert engine.stats.calls == 3 and engine.stats.sequences == 8


# ---------------------------------------------------------------------------------------------------------------
# Seeds and the global RNG
# ---------------------------------------------------------------------------------------------------------------
def test_seed_makes_sampling_reproducible_without_touching_the_global_rng(engine):
    sampled = SamplingSettings(max_new_tokens=6, temperature=1.0, seed=123)

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = engine.generate(CONVERSATIONS, sampled)
    assert torch.equal(torch.random.get_rng_state(), before), "a seeded call changed the global torch RNG"

    torch.manual_seed(999)  # a different global state must not matter either
    second = engine.generate(CONVERSATIONS, sampled)
    assert [g.text for g in first] == [g.text for g in second]

    other = engine.generate(CONVERSATIONS, SamplingSettings(max_new_tokens=6, temperature=1.0, seed=124))
    assert [g.text for g in other] != [g.text for g in first]

    # Sanity check of the check: an unseeded sampling call does consume the global RNG.
    before = torch.random.get_rng_state()
    engine.generate(CONVERSATIONS[:1], SamplingSettings(max_new_tokens=2, temperature=1.0))
    assert not torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seed_does_not_touch_the_global_cuda_rng(tiny_model_path, tokenizer):
    model = _load_tiny(tiny_model_path).to("cuda")
    cuda_engine = TransformersEngine(model, tokenizer)
    before = torch.cuda.get_rng_state()
    cuda_engine.generate(CONVERSATIONS[:2], SamplingSettings(max_new_tokens=4, temperature=1.0, seed=5))
    assert torch.equal(torch.cuda.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------------------------
# logprobs
# ---------------------------------------------------------------------------------------------------------------
def test_logprobs_match_a_manual_forward(engine, tiny, tokenizer):
    conversations = [CONVERSATIONS[1], CONVERSATIONS[3]]  # 100+ vs ~37 prompt tokens: padding is exercised
    continuations = ["The answer is 4.", "Paris is the capital of France, as everyone knows."]
    got = engine.logprobs(conversations, continuations)

    assert len(got) == 2
    for conv, cont, values in zip(conversations, continuations, got):
        text = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + cont_ids])
        with torch.no_grad():
            logits = tiny(input_ids=ids).logits[0].float()
        # log p(cont_ids[j] | prompt + cont_ids[:j]) is read off the logits at position len(prompt) - 1 + j
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cont_ids))
        expected = torch.log_softmax(logits[positions], dim=-1).gather(-1, torch.tensor(cont_ids)[:, None])[:, 0]
        assert len(values) == len(cont_ids)
        torch.testing.assert_close(torch.tensor(values), expected, atol=1e-4, rtol=1e-4)
        assert all(v <= 0 for v in values)


def test_logprobs_validate_lengths_and_accept_empty(engine):
    with pytest.raises(ValueError, match="2 conversations but 1 continuations"):
        engine.logprobs(CONVERSATIONS[:2], ["x"])
    assert engine.logprobs([], []) == []


# ---------------------------------------------------------------------------------------------------------------
# Token counting and truncation
# ---------------------------------------------------------------------------------------------------------------
LONG_TEXT = " ".join(f"Step {i}: add {i} to the running total {i * (i - 1) // 2}." for i in range(1, 80)) + (
    " Therefore the final answer is \\boxed{3081}."
)


def test_count_tokens_uses_the_real_tokenizer(engine, tokenizer):
    assert engine.count_tokens("") == 0
    assert engine.count_tokens(LONG_TEXT) == len(tokenizer.tokenize(LONG_TEXT))
    # not the base class's character heuristic
    assert engine.count_tokens(LONG_TEXT) != len(LONG_TEXT) // 3


def test_truncate_tokens_keeps_head_and_tail_within_budget(engine):
    total = engine.count_tokens(LONG_TEXT)
    budget = 40
    assert total > 10 * budget

    out = engine.truncate_tokens(LONG_TEXT, budget)
    assert out.count(TRUNCATION_MARK) == 1
    head, tail = out.split(TRUNCATION_MARK)
    assert head and tail
    assert LONG_TEXT.startswith(head) and LONG_TEXT.endswith(tail)
    assert tail.endswith("\\boxed{3081}.")  # the final answer survives
    assert engine.count_tokens(head) + engine.count_tokens(tail) <= budget
    assert engine.count_tokens(out) <= budget + engine.count_tokens(TRUNCATION_MARK) + 2  # +2: merges at the seams
    assert engine.count_tokens(out) < total


def test_truncate_tokens_edge_cases(engine):
    short = "The answer is \\boxed{7}."
    n = engine.count_tokens(short)
    assert engine.truncate_tokens(short, n) == short  # fits exactly: untouched
    assert engine.truncate_tokens(short, 100) == short
    assert engine.truncate_tokens(LONG_TEXT, 0) == ""
    one = engine.truncate_tokens(LONG_TEXT, 1)
    assert TRUNCATION_MARK in one and LONG_TEXT.endswith(one.split(TRUNCATION_MARK)[1])


class _NoTokenizerEngine(Engine):
    def generate(self, conversations, sampling, chat_template_kwargs=None):  # pragma: no cover - unused
        return []


def test_base_engine_character_heuristic_truncation():
    e = _NoTokenizerEngine()
    assert e.max_context_tokens is None
    text = "".join(chr(ord("a") + i % 26) for i in range(3000))
    assert e.count_tokens(text) == 1000
    assert e.truncate_tokens(text, 2000) == text
    out = e.truncate_tokens(text, 100)  # keeps 300 characters: 150 of head, 150 of tail
    head, tail = out.split(TRUNCATION_MARK)
    assert head == text[:150] and tail == text[-150:]
    assert e.truncate_tokens(text, 0) == ""


def test_counted_call_times_and_counts_completed_calls_only():
    """`Engine.counted_call`: the one place every engine's calls are timed and added to `stats`."""
    e = _NoTokenizerEngine()
    with e.counted_call() as call:
        call.generated([Generation("a", 3, 2), Generation("b", 4, 1, "length")])
    with e.counted_call() as call:
        call.scored(5, prompt_tokens=40)
    with pytest.raises(RuntimeError), e.counted_call() as call:
        raise RuntimeError("the server went away")  # a failed call is not counted
    s = e.stats
    assert (s.calls, s.sequences, s.prompt_tokens, s.completion_tokens) == (2, 7, 47, 3) and s.seconds >= 0


# ---------------------------------------------------------------------------------------------------------------
# Training mode, no_grad, and the PEFT adapter-disabled anchor
# ---------------------------------------------------------------------------------------------------------------
def _record_modes(model):
    seen = []

    def hook(module, args):
        seen.append((module.training, torch.is_grad_enabled()))

    return seen, model.register_forward_pre_hook(hook)


def test_engine_runs_in_eval_no_grad_and_restores_training_mode(tiny, tokenizer):
    engine = TransformersEngine(tiny, tokenizer)
    seen, handle = _record_modes(tiny)
    try:
        tiny.train()
        engine.generate(CONVERSATIONS[:2], SamplingSettings(max_new_tokens=2, temperature=0.0))
        engine.logprobs(CONVERSATIONS[:2], ["a", "b"])
        assert tiny.training is True
        assert seen and all(mode == (False, False) for mode in seen)  # dropout off, no autograd, in every forward

        tiny.eval()
        engine.generate(CONVERSATIONS[:1], SamplingSettings(max_new_tokens=1, temperature=0.0))
        assert tiny.training is False
    finally:
        handle.remove()
        tiny.eval()


def test_training_mode_restored_when_generation_raises(tiny, tokenizer):
    def boom(module, args):
        raise RuntimeError("forward failed")

    handle = tiny.register_forward_pre_hook(boom)
    try:
        tiny.train()
        with pytest.raises(RuntimeError, match="forward failed"):
            TransformersEngine(tiny, tokenizer).generate(CONVERSATIONS[:1], GREEDY)
        assert tiny.training is True
    finally:
        handle.remove()
        tiny.eval()


def test_peft_base_provider_is_the_initial_policy(tiny_model_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    base = _load_tiny(tiny_model_path)
    convs = CONVERSATIONS[:3]
    base_out = [g.text for g in TransformersEngine(base, tokenizer).generate(convs, GREEDY)]

    policy = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )

    @contextlib.contextmanager
    def provider():
        with policy.disable_adapter():
            yield policy

    anchor = TransformersEngine(provider, tokenizer)
    adapted = TransformersEngine(policy, tokenizer)

    policy.train()
    adapted_out = [g.text for g in adapted.generate(convs, GREEDY)]
    assert adapted_out != base_out  # the adapter really changes the policy
    assert policy.training is True

    anchor_out = [g.text for g in anchor.generate(convs, GREEDY)]
    assert anchor_out == base_out  # adapter disabled == pi_0
    assert policy.training is True

    # The adapter is active again after the anchor call.
    assert [g.text for g in adapted.generate(convs, GREEDY)] == adapted_out


# ---------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------------------------
def test_embedded_model_greedy_answer_stops_at_eos(embedded_model_path):
    engine = TransformersEngine.from_pretrained(embedded_model_path)
    assert engine.max_context_tokens == 8192  # SmolLM2's max_position_embeddings
    out = engine.generate(
        [
            [{"role": "user", "content": "What is the capital of France?"}],
            [{"role": "user", "content": "Write a long essay about the ocean."}],
        ],
        SamplingSettings(max_new_tokens=12, temperature=0.0),
    )
    paris, essay = out
    assert "Paris" in paris.text
    assert paris.finish_reason == "stop" and paris.completion_tokens < 12
    assert "<|im_end|>" not in paris.text and "<|im_start|>" not in paris.text
    assert essay.finish_reason == "length" and essay.completion_tokens == 12
    assert "Paris" not in essay.text


def test_next_token_logprobs_share_prefixes_exactly(embedded_model_path):
    """Judge prompts about one response share a long prefix; its KV cache is reused for every criterion. The result
    must equal computing each prompt on its own (real model, mixed lengths, one prompt with no partner)."""
    from cat_trl.rubrics import Judge
    from cat_trl.rubrics.judge import JudgeItem

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    response = "Rest, drink plenty of fluids, and see a doctor if the fever lasts more than three days."
    items = [JudgeItem([{"role": "user", "content": "My child has a fever."}], response, c) for c in
             ("Advises fluids.", "Recommends seeing a doctor when the fever persists for several days.", "Is rude.")]
    items.append(JudgeItem([{"role": "user", "content": "Hi"}], "Hello!", "Greets the user."))
    judge = Judge(TransformersEngine(model, tok, batch_size=2), mode="logprob")
    prompts = [[{"role": "user", "content": judge.prompt(i)}] for i in items]
    shared = TransformersEngine(model, tok, batch_size=2)
    plain = TransformersEngine(model, tok, batch_size=2)
    plain.share_prefixes = False
    got = shared.next_token_logprobs(prompts, ("yes", "no"))
    want = plain.next_token_logprobs(prompts, ("yes", "no"))
    assert shared.stats.extra.get("shared_prefix_tokens_saved", 0) > 100  # the three criteria shared a prefix
    assert "shared_prefix_tokens_saved" not in plain.stats.extra
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == pytest.approx(w[k], abs=1e-4)


def test_shared_prefixes_stay_exact_under_a_sliding_window(tiny_model_path):
    """A sliding-window mask counts cache slots, not positions: padding between a shared prefix and a short suffix
    would hide prefix tokens from it. Windowed models keep suffixes right-padded; the result equals computing each
    prompt on its own (random tiny Mistral, window 6, suffixes of very different lengths)."""
    from transformers import MistralConfig, MistralForCausalLM

    from cat_trl.engines.transformers_engine import _uses_sliding_window

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                           max_position_embeddings=512, attn_implementation="sdpa")
    model = MistralForCausalLM(config).eval()
    assert _uses_sliding_window(model.config)
    assert not _uses_sliding_window(MistralConfig(sliding_window=None))
    common = "Here is a fairly long shared context that every judge prompt about this response repeats. "
    prompts = [[{"role": "user", "content": common + tail}] for tail in
               ("Yes?", "Is this criterion, which is written out at some considerable length, satisfied here?")]
    shared = TransformersEngine(model, tok)
    plain = TransformersEngine(model, tok)
    plain.share_prefixes = False
    got = shared.next_token_logprobs(prompts, ("yes", "no"))
    want = plain.next_token_logprobs(prompts, ("yes", "no"))
    assert shared.stats.extra.get("shared_prefix_tokens_saved", 0) > 10
    for g, w in zip(got, want):
        for k in g:
            assert g[k] == pytest.approx(w[k], abs=1e-4)
