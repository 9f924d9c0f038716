"""The time-shared colocated vLLM anchor's orchestration on paths vLLM's CPU build cannot run (sleep/wake order,
tensor-parallel slicing, the GPU `load_weights` path), against an object with vLLM's surface that really generates with
transformers. Real vLLM (CPU build) is exercised by tests/test_vllm_real.py (`make test-vllm`). What is checked here:
which weights are loaded when, that the anchor's output is pi_0's even though the engine held the trained policy, the
prefix-cache reset, the sleep/wake order, that TRL is told to re-sync the policy afterwards, log-probs through
`prompt_logprobs`, and the length budget."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cat_trl.config import CaTGRPOConfig
from cat_trl.engines import SamplingSettings, TransformersEngine
from cat_trl.engines.vllm_colocated import (
    VLLMAnchorEngine,
    build_vllm_anchor,
    checkpoint_weights,
    module_weights,
    peft_base_weights,
)
from cat_trl.estimators import Group, SynthesisEstimator

GREEDY = SamplingSettings(max_new_tokens=12, temperature=0.0)
CONVERSATIONS = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Name a colour."}]]


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """`vllm.LLM`'s surface as TRL 1.16 uses it, backed by a transformers model whose weights `load_weights` really
    overwrites (so whatever was loaded last is what generates)."""

    def __init__(self, model, tokenizer, max_model_len: int = 2048):
        self.model, self.tokenizer, self.calls = model, tokenizer, []
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=runner)), model_config=SimpleNamespace(max_model_len=max_model_len))

    def _log(self, entry):
        if not (entry == "load_weights" and self.calls and self.calls[-1] == "load_weights"):
            self.calls.append(entry)

    def _load_weights(self, weights):
        params = dict(self.model.named_parameters())
        for name, tensor in weights:
            if name not in params:  # vLLM also skips tied duplicates such as lm_head when embeddings are tied
                assert name == "lm_head.weight", name
                continue
            params[name].data.copy_(tensor)
        self._log("load_weights")

    def reset_prefix_cache(self):
        self._log("reset_prefix_cache")

    def wake_up(self, tags):
        self._log(("wake_up", tuple(tags)))

    def sleep(self, level):
        self._log(("sleep", level))

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        self._log("generate")
        per_request = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(per_request) == len(prompts)  # vLLM: one SamplingParams, or one per prompt
        self.params = per_request
        outs = []
        for p, sampling_params in zip(prompts, per_request):
            ids = torch.tensor([p["prompt_token_ids"]])
            if getattr(sampling_params, "logprobs", None):  # top-k log-probs of the first generated position
                logps = torch.log_softmax(self.model(ids).logits[0, -1].float(), -1)
                top = torch.topk(logps, sampling_params.logprobs)
                first = {int(t): SimpleNamespace(logprob=float(v)) for v, t in zip(top.values, top.indices)}
                completion = SimpleNamespace(text="", token_ids=[int(top.indices[0])], finish_reason="length",
                                             logprobs=[first])
                outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[completion],
                                            prompt_logprobs=None))
                continue
            if getattr(sampling_params, "prompt_logprobs", None) is not None:
                logps = torch.log_softmax(self.model(ids).logits[0].float(), -1)
                prompt_lp = [None] + [{int(t): SimpleNamespace(logprob=float(logps[i - 1, t]))}
                                      for i, t in enumerate(p["prompt_token_ids"]) if i > 0]
                completion = SimpleNamespace(text="", token_ids=[0], finish_reason="length")
                outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[completion],
                                            prompt_logprobs=prompt_lp))
                continue
            assert sampling_params.temperature == 0.0  # the tests decode greedily
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=sampling_params.max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
            eos = self.tokenizer.eos_token_id
            if eos in gen:
                gen = gen[: gen.index(eos)]
            outs.append(SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], prompt_logprobs=None, outputs=[
                SimpleNamespace(text=self.tokenizer.decode(gen, skip_special_tokens=True), token_ids=gen,
                                finish_reason="stop")]))
        return outs


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture
def models(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    policy = copy.deepcopy(initial)
    _perturb(policy)  # "trained": the engine holds these weights after TRL's last sync
    engine_model = copy.deepcopy(policy)
    return tokenizer, initial, policy, engine_model


def _pi0_text(model, tokenizer):
    return [g.text for g in TransformersEngine(model, tokenizer).generate(CONVERSATIONS, GREEDY)]


def _vg(llm, sleep: bool):
    return SimpleNamespace(llm=llm, enable_sleep_mode=sleep, tensor_parallel_size=1, _llm_weights_sleeping=sleep)


@pytest.mark.parametrize("sleep", [False, True])
def test_copy_anchor_generates_pi0_then_hands_back(models, tiny_model_path, sleep):
    tokenizer, initial, policy, engine_model = models
    llm = FakeLLM(engine_model, tokenizer)
    vg = _vg(llm, sleep)
    trainer = SimpleNamespace(_last_loaded_step=7)
    engine = VLLMAnchorEngine(vg, checkpoint_weights(tiny_model_path, "cpu"), tokenizer,
                              mark_policy_stale=lambda: setattr(trainer, "_last_loaded_step", -1),
                              sampling_params_cls=FakeSamplingParams)
    assert _pi0_text(policy, tokenizer) != _pi0_text(initial, tokenizer)  # the policy really moved
    out = engine.generate(CONVERSATIONS, GREEDY)
    assert [g.text for g in out] == _pi0_text(initial, tokenizer)  # pi_0, although the engine held the policy
    assert all(g.prompt_tokens > 0 for g in out)
    assert trainer._last_loaded_step == -1  # TRL re-syncs the policy before its next generation
    expected = ["load_weights", "reset_prefix_cache", "generate"]
    if sleep:
        expected = [("wake_up", ("weights",)), "load_weights", "reset_prefix_cache", ("wake_up", ("kv_cache",)),
                    "generate", ("sleep", 2)]
    assert llm.calls == expected
    assert vg._llm_weights_sleeping is sleep  # TRL's own flag stays truthful: it re-pushes weights after a sleep
    # What TRL then does (sync_weights): the policy's weights go back in, and the engine generates the policy again.
    llm._load_weights(list(policy.named_parameters()))
    assert [o.outputs[0].text for o in llm.generate(
        [{"prompt_token_ids": engine._prompt_ids(c, None)} for c in CONVERSATIONS],
        FakeSamplingParams(temperature=0.0, max_tokens=12))] == _pi0_text(policy, tokenizer)


def test_disk_offload_streams_the_same_weights(models, tiny_model_path):
    tokenizer, initial, _, engine_model = models
    engine = VLLMAnchorEngine(_vg(FakeLLM(engine_model, tokenizer), False),
                              checkpoint_weights(tiny_model_path, "disk"), tokenizer, mark_policy_stale=lambda: None,
                              sampling_params_cls=FakeSamplingParams)
    assert [g.text for g in engine.generate(CONVERSATIONS, GREEDY)] == _pi0_text(initial, tokenizer)
    with pytest.raises(ValueError, match="cat_vllm_anchor_offload"):
        checkpoint_weights(tiny_model_path, "gpu")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        checkpoint_weights(str(tiny_model_path) + "/..", "cpu")


def test_peft_base_anchor_streams_unmerged_base_weights_without_copies(models):
    from peft import LoraConfig, get_peft_model

    tokenizer, initial, _, _ = models
    policy = get_peft_model(copy.deepcopy(initial), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                              init_lora_weights=False))  # non-zero adapter
    merged = copy.deepcopy(policy).merge_and_unload()  # what TRL's sync puts in vLLM (merged weights)
    assert _pi0_text(merged, tokenizer) != _pi0_text(initial, tokenizer)
    source = peft_base_weights(policy)
    names = [n for n, _ in source()]
    assert names and not any("lora" in n or "base_model" in n or "base_layer" in n for n in names)
    assert set(names) == {n for n, _ in initial.named_parameters()}
    # zero extra weight memory: every streamed tensor is the policy's own base parameter storage
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    assert all(t.data_ptr() in policy_ptrs for _, t in source())
    engine = VLLMAnchorEngine(_vg(FakeLLM(merged, tokenizer), False), source, tokenizer,
                              mark_policy_stale=lambda: None, sampling_params_cls=FakeSamplingParams)
    assert [g.text for g in engine.generate(CONVERSATIONS, GREEDY)] == _pi0_text(initial, tokenizer)


def test_ref_model_anchor_and_logprobs(models):
    tokenizer, initial, policy, engine_model = models
    engine = VLLMAnchorEngine(_vg(FakeLLM(engine_model, tokenizer), False), module_weights(initial), tokenizer,
                              mark_policy_stale=lambda: None, sampling_params_cls=FakeSamplingParams)
    continuations = ["It is 5.", "Blue."]
    got = engine.logprobs(CONVERSATIONS, continuations)
    want = TransformersEngine(initial, tokenizer).logprobs(CONVERSATIONS, continuations)
    assert [len(r) for r in got] == [len(r) for r in want]
    for g, w in zip(got, want):
        assert torch.allclose(torch.tensor(g), torch.tensor(w), atol=1e-4)
    assert engine.weight_loads == 1 and engine.stats.calls == 1


def test_synthesis_budget_uses_the_engines_max_model_len(models, tiny_model_path):
    tokenizer, initial, _, engine_model = models
    engine = VLLMAnchorEngine(_vg(FakeLLM(engine_model, tokenizer, max_model_len=512), False),
                              module_weights(initial), tokenizer, mark_policy_stale=lambda: None,
                              sampling_params_cls=FakeSamplingParams)
    assert engine.max_context_tokens == 512
    est = SynthesisEstimator(engine, SamplingSettings(max_new_tokens=400, temperature=0.0))
    with pytest.raises(ValueError, match="vllm_max_model_length"):
        est.check_budget(8, 512)
    # within budget: long rollouts are truncated evenly and every group still gets one reference, in one call
    est = SynthesisEstimator(engine, SamplingSettings(max_new_tokens=8, temperature=0.0))
    refs = est.estimate([Group(prompt="q", completions=["word " * 400, "short"]), Group(prompt="q", completions=["a"])])
    assert len(refs) == 2 and refs[0].diagnostics["truncated"] == 1 and engine.weight_loads == 1


def test_build_from_trainer_and_config_checks(models, tiny_model_path, tmp_path):
    tokenizer, initial, policy, engine_model = models
    args = SimpleNamespace(use_vllm=True, vllm_mode="colocate")
    trainer = SimpleNamespace(
        args=args, vllm_generation=_vg(FakeLLM(engine_model, tokenizer), False), model=policy, ref_model=initial,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu")), is_fsdp_enabled=False,
        processing_class=tokenizer, _last_loaded_step=3,
    )
    import cat_trl.engines.vllm_colocated as ve

    original = ve.VLLMAnchorEngine.__init__

    def init(self, *a, **kw):
        kw.setdefault("sampling_params_cls", FakeSamplingParams)
        original(self, *a, **kw)

    ve.VLLMAnchorEngine.__init__ = init
    try:
        engine = build_vllm_anchor(trainer, "ref_model", None)
        assert [g.text for g in engine.generate(CONVERSATIONS, GREEDY)] == _pi0_text(initial, tokenizer)
        assert trainer._last_loaded_step == -1 and engine.name == "vllm-colocate:ref_model"
        with pytest.raises(ValueError, match="initial checkpoint"):
            build_vllm_anchor(trainer, "copy", None)
        trainer.args = SimpleNamespace(use_vllm=True, vllm_mode="server")
        with pytest.raises(ValueError, match="vllm_mode: colocate"):
            build_vllm_anchor(trainer, "copy", tiny_model_path)
    finally:
        ve.VLLMAnchorEngine.__init__ = original

    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert CaTGRPOConfig(**base).cat_anchor_engine == "transformers"  # auto without vLLM
    with pytest.raises(ValueError, match="use_vllm: true and vllm_mode: colocate"):
        CaTGRPOConfig(**base, cat_anchor_engine="vllm")
    with pytest.raises(ValueError, match="use_vllm: true and vllm_mode: colocate"):
        CaTGRPOConfig(**base, cat_anchor_engine="vllm", use_vllm=True, vllm_mode="server")


def test_tensor_parallel_ranks_with_unequal_group_counts_get_their_own_outputs(models, monkeypatch):
    """TP=2: both ranks of the group submit all gathered prompts to the one engine; rank 0 holds two conversations and
    rank 1 one, so each rank's outputs start at the sum of the earlier ranks' counts (not rank x own count). The
    engine echoes each prompt, so every output names the conversation it answers."""
    tokenizer, initial, _, engine_model = models

    class EchoLLM(FakeLLM):
        def generate(self, prompts, sampling_params, use_tqdm=False):
            self._log("generate")
            return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], prompt_logprobs=None, outputs=[
                SimpleNamespace(text=self.tokenizer.decode(p["prompt_token_ids"]), token_ids=[0],
                                finish_reason="stop")]) for p in prompts]

    llm = EchoLLM(engine_model, tokenizer)
    per_rank = [CONVERSATIONS, [[{"role": "user", "content": "Say hello."}]]]
    for rank in (1, 0):
        vg = SimpleNamespace(llm=llm, enable_sleep_mode=False, tensor_parallel_size=2, tp_group="tp",
                             _llm_weights_sleeping=False)
        engine = VLLMAnchorEngine(vg, module_weights(initial), tokenizer, mark_policy_stale=lambda: None,
                                  sampling_params_cls=FakeSamplingParams)
        ids = [[engine._prompt_ids(c, None) for c in convs] for convs in per_rank]

        def all_gather_object(out, obj, group=None, rank=rank, ids=ids):
            assert group == "tp" and obj == ids[rank]
            out[:] = ids

        monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, rank=rank: rank)
        got = engine.generate(per_rank[rank], GREEDY)
        assert len(got) == len(per_rank[rank])
        for generation, conversation in zip(got, per_rank[rank]):
            assert conversation[-1]["content"] in generation.text


def test_auto_falls_back_to_transformers_where_the_vllm_anchor_cannot_stream_pi0(models, tmp_path):
    """FSDP1 with the reference model as pi_0: the vLLM anchor streams sharded weights from FSDP2 only (FSDP1 flattens
    them per module). `auto` logs and uses the transformers anchor (which still reproduces pi_0); an explicit `vllm`
    raises, naming the way out. (FSDP2 streams: tests/test_vllm_real.py runs it for real.)"""
    from cat_trl.engines.vllm_colocated import VLLMAnchorUnsupported
    from cat_trl.components import build_anchor_engine

    tokenizer, initial, policy, engine_model = models

    def trainer(auto: bool):
        args = SimpleNamespace(
            cat_anchor_engine="vllm", cat_anchor_engine_auto=auto, cat_anchor_weights="ref_model", beta=0.04,
            sync_ref_model=False, use_vllm=True, vllm_mode="colocate", cat_vllm_anchor_offload="cpu",
            cat_anchor_batch_size=None, cat_anchor_max_context=None, ds3_gather_for_generation=True,
            cat_anchor_model_name_or_path=None,
        )
        accelerator = SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu"), num_processes=1,
                                      state=SimpleNamespace(deepspeed_plugin=None,
                                                            fsdp_plugin=SimpleNamespace(fsdp_version=1)))
        return SimpleNamespace(args=args, vllm_generation=_vg(FakeLLM(engine_model, tokenizer), False), model=policy,
                               ref_model=initial, accelerator=accelerator, is_fsdp_enabled=True,
                               is_deepspeed_enabled=False, processing_class=tokenizer, _last_loaded_step=3)

    with pytest.raises(VLLMAnchorUnsupported, match="fsdp_version: 2.*cat_anchor_engine: transformers"):
        build_anchor_engine(trainer(auto=False))
    t = trainer(auto=True)
    engine, source, kind = build_anchor_engine(t)
    assert isinstance(engine, TransformersEngine) and source == "ref_model"
    assert kind == "transformers"
    assert [g.text for g in engine.generate(CONVERSATIONS, GREEDY)] == _pi0_text(initial, tokenizer)


def test_config_refuses_what_the_chosen_anchor_engine_cannot_do(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    colocate = dict(use_vllm=True, vllm_mode="colocate")
    judged = dict(cat_reward="rubric", cat_judge_engine="anchor", cat_judge_mode="logprob")
    # the anchor as log-prob judge needs next-token log-probs: auto picks transformers, explicit vllm is refused
    with pytest.raises(ValueError, match="cat_judge_mode: generate, or cat_anchor_engine: transformers"):
        CaTGRPOConfig(**base, **colocate, **judged, cat_anchor_engine="vllm")
    # (TRL itself refuses use_vllm without vLLM installed, so `auto` is checked on the resolution rule directly)
    args = SimpleNamespace(open_ended=True, cat_judge_engine="anchor", cat_judge_mode="logprob")
    assert "logprob" in CaTGRPOConfig._vllm_anchor_lacks(args)
    args.cat_judge_mode = "generate"
    assert CaTGRPOConfig._vllm_anchor_lacks(args) is None
    # likelihood selection needs continuation log-probs, which a chat-completions server does not return
    for estimator in ("min_ppl", "mutual_predictability"):
        with pytest.raises(ValueError, match="cat_anchor_engine: transformers"):
            CaTGRPOConfig(**base, cat_estimator=estimator, cat_anchor_engine="openai",
                          cat_anchor_base_url="http://127.0.0.1:1/v1")
    assert CaTGRPOConfig(**base).cat_anchor_engine_auto is True


# ---------------------------------------------------------------------------------------- the standalone VLLMEngine


def _standalone(engine_model, tokenizer):
    from cat_trl.engines.vllm_engine import VLLMEngine

    return VLLMEngine(FakeLLM(engine_model, tokenizer), tokenizer, sampling_params_cls=FakeSamplingParams)


@pytest.mark.parametrize("top_k", [1, "vocabulary"])
def test_next_token_logprobs_equal_transformers_whether_or_not_the_tokens_are_in_the_top_k(models, top_k, monkeypatch):
    """The top-k read and the exact fallback for first tokens outside it (top_k=1 forces it for all but one token;
    the whole vocabulary never needs it) give transformers' numbers."""
    import cat_trl.engines.vllm_engine as vm

    tokenizer, _, policy, _ = models
    top_k = policy.config.vocab_size if top_k == "vocabulary" else top_k
    monkeypatch.setattr(vm, "NEXT_TOKEN_TOP_K", top_k)
    engine = _standalone(policy, tokenizer)
    questions = [[{"role": "user", "content": f"Is {n} even? Answer yes or no."}] for n in (3, 8)]
    got = engine.next_token_logprobs(questions, ("yes", "no"))
    want = TransformersEngine(policy, tokenizer).next_token_logprobs(questions, ("yes", "no"))
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
    assert (engine.stats.extra.get("next_token_exact_requests", 0) > 0) == (top_k == 1)


def test_seeded_calls_give_every_request_its_own_seed(models):
    """vLLM seeds per request: one seed for the whole call would make G identical prompts sample G identical texts."""
    from cat_trl.engines.vllm_engine import request_seed

    tokenizer, _, policy, _ = models
    engine = _standalone(policy, tokenizer)
    engine.generate(CONVERSATIONS * 2, SamplingSettings(max_new_tokens=4, temperature=0.0, seed=7))
    seeds = [p.seed for p in engine.llm.params]
    assert seeds == [request_seed(7, i) for i in range(4)] and len(set(seeds)) == 4
    engine.generate(CONVERSATIONS, GREEDY)  # unseeded: one SamplingParams for the call, no seed
    assert [p.seed for p in engine.llm.params] == [None, None]
    assert request_seed(8, 0) not in seeds  # the next call's seeds are others


def test_seeded_waves_keep_every_prompt_whole_within_one_scheduler_step():
    """vLLM's CPU build cannot chunk a seeded prefill; waves keep each prompt (plus one token per request for a
    neighbour's decode) within the step's token budget and `max_num_seqs`, in order, every index once."""
    from cat_trl.engines.vllm_engine import seeded_waves

    assert seeded_waves([100, 200, 300], None) == [range(3)]
    assert seeded_waves([], (4096, 256)) == []
    assert seeded_waves([1000] * 4, (4096, 256)) == [range(4)]  # 4 * 1001 fits
    assert seeded_waves([1000] * 5, (4096, 256)) == [range(4), range(4, 5)]
    assert seeded_waves([4096, 10, 10], (4096, 256)) == [range(1), range(1, 3)]  # a whole budget alone
    assert seeded_waves([10] * 5, (4096, 2)) == [range(2), range(2, 4), range(4, 5)]
    for lengths, limits in (([700, 1200, 30, 2000, 2000, 5, 900], (2048, 3)), ([1] * 50, (16, 256))):
        waves = seeded_waves(lengths, limits)
        assert [i for w in waves for i in w] == list(range(len(lengths)))
        assert all(sum(lengths[i] + 1 for i in w) <= limits[0] or len(w) == 1 for w in waves)
        assert all(len(w) <= limits[1] for w in waves)
    with pytest.raises(ValueError, match="4097-token prompt.*4096-token scheduler budget.*max_num_batched_tokens"):
        seeded_waves([10, 4097], (4096, 256))


def test_a_seeded_call_over_the_budget_is_sent_in_waves_with_each_request_keeping_its_seed(models, monkeypatch):
    """Where the hazard exists (vLLM's CPU build, chunked prefill on), `_run` splits a seeded call; request i keeps
    seed (call seed, i) whichever wave it lands in, and outputs come back in the prompts' order. Unseeded calls and
    engines without chunked prefill go in one `generate`."""
    from cat_trl import trl_compat
    from cat_trl.engines.vllm_engine import request_seed

    tokenizer, _, policy, _ = models
    engine = _standalone(policy, tokenizer)
    scheduler = SimpleNamespace(enable_chunked_prefill=True, max_num_batched_tokens=40, max_num_scheduled_tokens=None,
                                max_num_seqs=256)
    engine.llm.llm_engine.vllm_config = SimpleNamespace(scheduler_config=scheduler)
    sent = []
    generate = engine.llm.generate

    def recording(prompts, sampling_params, use_tqdm=False):
        per = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        sent.append([(len(p["prompt_token_ids"]), sp.seed) for p, sp in zip(prompts, per)])
        return generate(prompts, sampling_params, use_tqdm)

    engine.llm.generate = recording
    monkeypatch.setattr(trl_compat, "vllm_runs_on_cpu", lambda: False)
    assert trl_compat.vllm_seeded_prefill_limits(engine.llm) is None  # CUDA rewinds its generators itself
    monkeypatch.setattr(trl_compat, "vllm_runs_on_cpu", lambda: True)
    assert trl_compat.vllm_seeded_prefill_limits(engine.llm) == (40, 256)

    conversations = CONVERSATIONS * 3
    seeded = SamplingSettings(max_new_tokens=3, temperature=0.0, seed=7)
    lengths = [len(engine._prompt_ids(c, None)) for c in conversations]
    texts = [g.text for g in engine.generate(conversations, seeded)]
    assert len(sent) > 1 and all(sum(n + 1 for n, _ in wave) <= 40 for wave in sent)
    assert [n for wave in sent for n, _ in wave] == lengths
    assert [seed for wave in sent for _, seed in wave] == [request_seed(7, i) for i in range(6)]
    assert engine.stats.extra["seeded_waves"] == len(sent)
    sent.clear()
    unseeded = SamplingSettings(max_new_tokens=3, temperature=0.0)
    assert [g.text for g in engine.generate(conversations, unseeded)] == texts  # greedy, in order, whole
    assert len(sent) == 1  # unseeded: one call
    scheduler.enable_chunked_prefill = False
    assert trl_compat.vllm_seeded_prefill_limits(engine.llm) is None
    sent.clear()
    engine.generate(conversations, seeded)
    assert len(sent) == 1


def test_standalone_engine_generates_and_scores_like_transformers(models):
    tokenizer, _, policy, _ = models
    engine = _standalone(policy, tokenizer)
    hf = TransformersEngine(policy, tokenizer)
    assert [g.text for g in engine.generate(CONVERSATIONS, GREEDY)] == [g.text for g in hf.generate(CONVERSATIONS, GREEDY)]
    texts = ["Five.", "Blue, I think."]
    for a, b in zip(engine.logprobs(CONVERSATIONS, texts), hf.logprobs(CONVERSATIONS, texts)):
        assert a == pytest.approx(b, abs=1e-4)
    assert engine.stats.calls == 2 and engine.max_context_tokens == 2048
