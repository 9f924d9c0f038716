"""The package layout of docs/architecture.md holds: every import points down the layers (or stays within one).

A module may import only from its own layer or a lower one, so e.g. engines never reach into the trainer, data never
into the CLI, and the reward functions stay usable without the trainer. Imports under `if TYPE_CHECKING:` are
annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cat_trl"

#: lowest first; a module's layer is the entry of its longest matching prefix
LAYERS = [
    ("messages", "distributed", "trl_compat", "embedded_model", "answers"),
    ("engines", "data"),
    ("estimators",),
    ("rubrics",),
    ("rewards",),
    ("config", "components", "callbacks"),
    ("trainer",),
    ("evaluation",),
    ("comparison",),
    ("cli",),
]


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, layer = len(name), i
    if layer is None:
        raise AssertionError(f"cat_trl.{module} is in no layer of LAYERS (add it to docs/architecture.md and here)")
    return layer


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text())
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("cat_trl"):
                target = node.module[len("cat_trl."):] if node.module != "cat_trl" else ""
            else:
                target = None
            if target is not None:
                names = [target] if node.module else [".".join(filter(None, [target, a.name])) for a in node.names]
                yield from ((n, node.lineno) for n in names if n)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cat_trl."):
                    yield alias.name[len("cat_trl."):], node.lineno
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(tree)


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    module = _module_name(path)
    if not module:
        return  # the package's lazy __init__
    own = _layer(module)
    upward = [f"line {line}: {target}" for target, line in _imports(path, module) if _layer(target) > own]
    assert not upward, f"cat_trl.{module} (layer {own}) imports from higher layers: {upward}"


def test_top_level_names_do_not_collide():
    """No top-level module shares its name with a package or with a module inside another package."""
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    nested = {p.stem for p in PACKAGE.glob("*/*.py")} - {"__init__", "base", "prompts"}
    assert not top & packages and not top & nested, (top & packages, top & nested)


def test_few_top_level_modules():
    """At most 8 top-level modules, each a real unit; everything else lives in a package named for what it holds."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 8, top
    assert all(len(p.read_text().splitlines()) >= 40 for p in PACKAGE.glob("*.py") if p.stem != "__init__"), \
        "a top-level micro-module belongs inside the package that uses it"


def test_no_two_modules_share_a_stem_across_packages():
    """Names that collide in a reader's head (`grouping.py` / `rewards/group.py`, `rubrics/` / `rewards/rubric.py`,
    `config.py` / `from_config.py`) are gone: no module stem is also a package name or another package's module."""
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    # role names every package may have: its interface (`base`), its prompts, its report writer
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__", "base", "prompts", "report")]
    assert not set(stems) & packages, set(stems) & packages
    duplicates = {s for s in stems if stems.count(s) > 1}
    assert not duplicates, duplicates


def test_importing_the_rewards_stays_light():
    """`import cat_trl` / `import cat_trl.rewards` (what `trl grpo --reward_funcs cat_trl.rewards.cat_math_reward`
    does first) load neither torch nor TRL; the verifiable reward itself needs neither."""
    import subprocess
    import sys

    code = ("import sys, cat_trl, cat_trl.rewards\n"
            "heavy = lambda: sorted(m for m in ('torch', 'trl', 'transformers', 'accelerate') if m in sys.modules)\n"
            "assert heavy() == [], heavy()\n"
            "reward = cat_trl.rewards.cat_math_reward\n"
            "assert reward([[{'content': '\\\\boxed{2}'}]], cat_reference=['\\\\boxed{2}']) == [1.0]\n"
            "assert heavy() == [], heavy()\n"
            "assert cat_trl.rewards.cat_math_reward is reward\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
