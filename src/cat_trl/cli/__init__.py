"""`cat-trl` command line: `cat-trl train CONFIG.yaml [--key value ...]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: cat-trl <command> ...

commands:
  train CONFIG.yaml [--key value ...]
          CaT-RL (GRPO with anchor-synthesized references). Same as
          `accelerate launch -m cat_trl.cli.train --config CONFIG.yaml [--key value ...]`.
  eval CONFIG.yaml [--key value ...]
          Test-time CaT vs Single / Majority / Self-BoN / min-PPL / mutual predictability on one pool of rollouts:
          accuracy vs G, synthesis-vs-selection analyses, costs -> JSON, Markdown and PNG.
  sweep SWEEP.yaml [--local] [--dry_run] [-- extra args]
          Grid over G (prompts per step fixed): creates the W&B sweep, or runs it here offline with --local and
          writes a comparison table and plot.
  compare CONFIG.yaml [--key value ...]
          A learning comparison: CaT-RL vs majority / selection estimators / GRPO on gold labels / CaT-SFT, all
          from one initial model, scored on a held-out split -> compare_results.json, report and plot.
  healthbench-eval --policy MODEL --grader-base-url URL --grader-model NAME [...]
          Score a policy on the HealthBench hold-out with the physician rubrics (see --help).
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        if rest and rest[0] in ("-h", "--help"):
            from .train import main as train_main

            return train_main(["--help"])
        if not rest or rest[0].startswith("-"):
            print("cat-trl train: missing CONFIG.yaml\n" + USAGE, file=sys.stderr)
            return 2
        from .train import main as train_main

        return train_main(["--config", rest[0], *rest[1:]])
    if command == "eval":
        from .eval import main as eval_main

        return eval_main(rest)
    if command == "sweep":
        from .sweep import main as sweep_main

        return sweep_main(rest)
    if command == "compare":
        from .compare import main as compare_main

        return compare_main(rest)
    if command == "healthbench-eval":
        from .healthbench_eval import main as hb_main

        return hb_main(rest)
    print(f"cat-trl: unknown command {command!r}\n" + USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
