"""Merge pieces of one `cat-trl compare` experiment that ran into separate output directories (e.g. two seeds side by
side), then rewrite the reports:

    python scripts/merge_compare.py results/compare-cpu /tmp/piece-a/results/compare-cpu /tmp/piece-b/results/compare-cpu

The first directory is the target (it may already hold pieces); the others are merged into it. Only pieces of the
same experiment (`experiment_sha256`) merge. See `cat_trl.comparison.runner.merge_directories`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from cat_trl.comparison.report import write_reports
    from cat_trl.comparison.runner import merge_directories

    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    target, sources = argv[0], argv[1:]
    try:
        merged = merge_directories([target, *sources], target)
    except (ValueError, FileNotFoundError) as err:
        print(f"merge_compare: {err}", file=sys.stderr)
        return 2
    paths = write_reports(merged, target, merged.get("machine"))
    print(f"merged {len(sources) + 1} directories ({len(merged['pieces'])} pieces): wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
