"""Test helper (not part of the library): a tiny random-weight Llama with the *real* SmolLM2 tokenizer and chat
template. The prompt/chat/tokenization paths behave exactly as with the real model while a forward pass costs
nothing. Built once into the model cache with the same process-safe protocol as the embedded checkpoint
(`cat_trl.embedded_model.build_once`)."""

from __future__ import annotations

from pathlib import Path

import torch

from cat_trl.embedded_model import build_once, cache_dir, is_complete, read_marker, resolve_model_path, save_tokenizer

EMBEDDED = "smollm2-135m-instruct"


def build_tiny_model(
    out_dir: Path | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Build (once) a random-weight ``LlamaForCausalLM`` with the real SmolLM2 tokenizer; return its directory.

    Why: tests and smoke runs need the real tokenizer, chat template and special tokens (SmolLM2 is a Llama
    architecture) but not real weights; a 2-layer, 64-wide model runs a GRPO step in milliseconds. The vocab
    size equals ``len(tokenizer)``, ``max_position_embeddings`` is 2048, weights are float32 and seeded by
    ``seed``. The tokenizer and generation config are copied from the converted embedded checkpoint (which is
    converted first if needed).

    Cached and process-safe like `cat_trl.embedded_model.convert_gguf_to_checkpoint`: returns immediately if ``out_dir`` is
    already complete. Default ``out_dir``: ``cache_dir()/"models"/f"tiny-llama-h{hidden_size}-l{num_layers}-s{seed}"``
    (with ``-a{num_heads}`` appended when ``num_heads`` is not 4, so different shapes never share a directory).

    Raises:
        ValueError: ``hidden_size`` is not divisible by ``num_heads``, or ``out_dir`` already holds a tiny model
            built with different parameters.
    """
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    params = {"hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads, "seed": seed}
    if init_std != 0.02:
        params["init_std"] = init_std
    if out_dir is None:
        name = (f"tiny-llama-h{hidden_size}-l{num_layers}-s{seed}" + (f"-a{num_heads}" if num_heads != 4 else "")
                + (f"-i{init_std:g}" if init_std != 0.02 else ""))
        out_dir = cache_dir() / "models" / name
    out_dir = Path(out_dir).expanduser().absolute()
    if is_complete(out_dir):
        existing = read_marker(out_dir).get("params")
        if existing is not None and existing != params:
            raise ValueError(f"{out_dir} already holds a tiny model built with {existing}, not {params}")
        return out_dir

    embedded = resolve_model_path(EMBEDDED)  # outside our lock: it takes its own

    def build(tmp: Path) -> None:
        from transformers import (
            AutoTokenizer,
            GenerationConfig,
            LlamaConfig,
            LlamaForCausalLM,
        )

        tokenizer = AutoTokenizer.from_pretrained(embedded)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=init_std,
        )
        config.dtype = torch.float32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config).to(torch.float32)
        model.generation_config = GenerationConfig.from_pretrained(embedded)
        model.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)

    return build_once(out_dir, build, what="tiny random Llama", info={"params": params, "tokenizer": embedded})
