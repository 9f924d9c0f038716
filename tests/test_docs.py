"""The examples in the docstrings users meet first run as written; README.md opens with the two commands, stays a
front page that links every docs/ page, and every relative link in README.md and docs/*.md resolves."""

from __future__ import annotations

import doctest
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

import cat_trl.rewards.verifiable as verifiable
from cat_trl.trainer import CaTGRPOTrainer


def test_reward_docstring_examples_run():
    result = doctest.testmod(verifiable, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0


def test_trainer_docstring_example_trains(tmp_path, embedded_model_path, monkeypatch):
    """The `CaTGRPOTrainer` example (embedded model, built-in problems, one CPU step) runs verbatim."""
    code = textwrap.dedent(re.search(r"```python\n(.*?)```", CaTGRPOTrainer.__doc__, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "CaTGRPOTrainer.__doc__", "exec"), namespace)  # noqa: S102 - our own docstring
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    assert os.path.exists(tmp_path / "cat-out" / "cat_groups.jsonl")
    assert any(k.startswith("cat/") for k in trainer.state.log_history[0])


# --- README and docs/: the README stays a front page, and every relative link in README.md and docs/*.md resolves. ---

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks (a `# comment` in a bash block is no heading, a `[x](y)` there no link)."""
    return FENCE.sub("", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: markup dropped, lower case, punctuation removed, spaces to '-', duplicates numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> list[str]:
    return LINK.findall(re.sub(r"`[^`\n]*`", "", _prose(path.read_text())))


def test_readme_opens_with_the_two_commands():
    """The README's first lines are the two commands that set up everything: the main job and the tests."""
    lines = README.read_text().splitlines()
    assert lines[2] == "```bash" and lines[5] == "```", lines[:6]
    assert lines[3].startswith("make quickstart ") and lines[4].startswith("make test "), lines[3:5]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^quickstart:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_is_a_front_page_and_links_every_docs_page():
    """Reference material lives in docs/; the README stays short and links every page there."""
    assert len(README.read_text().splitlines()) <= 150, "README over 150 lines: move reference material to docs/"
    linked = {(REPO / target.split("#")[0]).resolve() for target in _links(README) if target.startswith("docs/")}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


def test_relative_links_in_readme_and_docs_resolve():
    """Every relative link (file, folder, or file#heading) in README.md and docs/*.md points at something that exists."""
    broken = []
    for page in [README, *DOCS]:
        for target in _links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_catches_a_broken_link(tmp_path):
    """The checker above is not vacuous: it finds links, skips code, and knows GitHub's anchors."""
    page = tmp_path / "page.md"
    page.write_text("# A `cat_*` title: W&B, vLLM\n\n[x](missing.md) `[y](in-code.md)`\n```\n[z](in-fence.md)\n# not\n```\n")
    assert _links(page) == ["missing.md"]
    assert _anchors(page) == {"a-cat_-title-wb-vllm"}
    assert len(_links(README)) >= 10  # the README's own links are found


def test_readme_speed_figures_are_the_stored_benchmark_json():
    """Every speed figure in the README is rendered from a benchmark JSON in benchmarks/ (scripts/speed_figures.py):
    a rerun that changes the JSON, or a hand edit of the README, fails here until `--write` is run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_figures", REPO / "scripts" / "speed_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert module.readme_block(README.read_text()) == rendered, "README speed table is stale: run " \
        "`python scripts/speed_figures.py --write`"
    # the rows carry the JSON's figures, not text of their own
    overlap = json.loads((REPO / "benchmarks" / "results-overlap-cpu.json").read_text())
    for row in overlap["rows"]:
        assert f"**{row['overlapped_over_serial']:.2f}×**" in rendered


@pytest.mark.parametrize("name", ["results-vllm-cpu.json", "results-vllm-256-cpu.json",
                                  "results-step-transformers-cpu.json"])
def test_published_step_benchmarks_are_honest_runs(name):
    """What the README's step rows claim holds in the stored run: rollouts *and* the anchor's syntheses reached the
    forced length, at least 2 processes per arm, the step split stored for both arms, a clean revision recorded."""
    d = json.loads((REPO / "benchmarks" / name).read_text())
    s = d["setting"]
    assert d["anchor_tokens_per_synthesis"] == s["synthesis_tokens"]
    assert d["rollout_mean_length"] == {"plain": s["completion_tokens"], "cat": s["completion_tokens"]}
    assert s["processes_per_arm"] >= 2 and d["cat_step_s"]["n"] == d["plain_step_s"]["n"] >= 4
    assert set(d["step_split_s"]) == {"plain", "cat"} and d["step_split_s"]["cat"]["reward"]["median"] > 0
    assert d["provenance"]["git"]["dirty"] is False and d["provenance"]["git"]["revision"]


def test_published_engine_and_server_benchmarks_are_clean_runs():
    """The eval-engines run compared the engines on the same settings and agreed on the held-out accuracy; the real
    vLLM-server overlap run measured every arm equally often."""
    engines = json.loads((REPO / "benchmarks" / "results-eval-engines-cpu.json").read_text())
    assert {r["engine"] for r in engines["runs"]} == {"vllm", "transformers"}
    accuracy = {r["engine"]: r["greedy_accuracy"] for r in engines["heldout_runs"]}
    assert accuracy["vllm"] == accuracy["transformers"]
    server = json.loads((REPO / "benchmarks" / "results-overlap-vllm-cpu.json").read_text())
    assert len({q["n"] for q in server["steps"].values()}) == 1
    for d in (engines, server):
        assert d["provenance"]["git"]["dirty"] is False
