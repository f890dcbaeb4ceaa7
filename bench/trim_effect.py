"""What holding a summary to the words asked does to its ROUGE, measured on stored summaries (JSON).

    python -m bench.trim_effect --data squality-dev --strategy truncate-tail \
        --old runs/dev-1127 --new runs/dev-min

``--old`` is a ``bench.quality`` run directory written by a revision that did not trim (before 2
December 2026), ``--new`` one written by this checkout. For every item both hold, the old summary is
scored as stored and again after the pipeline's cleanup of today (``prompt.clean_summary`` to the
item's target words), and the new summary as stored.
Prints one JSON object: mean words and Overall of each, and three paired differences with bootstrap
95% intervals (new - old, trimmed old - old, new - trimmed old), so a change between two revisions
splits into what the trimming does to the same text and what is left.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.quality import load_items
from infsum.prompt import clean_summary
from infsum.scoring import bootstrap_ci, score


def stored_rows(run_dir: Path, strategy: str) -> dict[str, dict]:
    """The stored rows of ``strategy`` in a ``bench.quality`` run directory, by item id."""
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((run_dir / "items" / strategy).glob("*.json"))
    }


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of the per-item differences a - b (fractions, reported in points), its bootstrap 95%
    interval, and the items better and worse."""
    diffs = [100 * (x - y) for x, y in zip(a, b, strict=True)]
    lo, hi = bootstrap_ci(diffs)
    return {
        "delta": round(sum(diffs) / len(diffs), 2),
        "ci": [round(lo, 2), round(hi, 2)],
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
    }


def main() -> None:
    """Score both runs' common items and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="squality-dev")
    p.add_argument("--strategy", required=True)
    p.add_argument("--old", type=Path, required=True, help="run directory of a revision that did not trim")
    p.add_argument("--new", type=Path, required=True, help="run directory of this checkout")
    args = p.parse_args()
    items = {i.id: i for i in load_items(args.data)}
    old, new = stored_rows(args.old, args.strategy), stored_rows(args.new, args.strategy)
    common = [k for k in old if k in new and k in items]
    if len(common) < 5:
        raise SystemExit(f"{len(common)} items in both runs: at least 5 are needed for an interval")
    scores: dict[str, list[float]] = {"old": [], "old_trimmed": [], "new": []}
    words: dict[str, list[int]] = {"old": [], "old_trimmed": [], "new": []}
    for k in common:
        refs, target = items[k].references, new[k]["words_target"]
        texts = {
            "old": old[k]["summary"],
            "old_trimmed": clean_summary(old[k]["summary"], target),
            "new": new[k]["summary"],
        }
        for name, text in texts.items():
            scores[name].append(score(text, refs).overall)
            words[name].append(len(text.split()))
    n = len(common)
    out = {
        "strategy": args.strategy,
        "items": n,
        "words_target": round(sum(new[k]["words_target"] for k in common) / n, 1),
        "mean_words": {k: round(sum(v) / n, 1) for k, v in words.items()},
        "overall": {k: round(100 * sum(v) / n, 2) for k, v in scores.items()},
        "new_minus_old": paired_difference(scores["new"], scores["old"]),
        "trimmed_old_minus_old": paired_difference(scores["old_trimmed"], scores["old"]),
        "new_minus_trimmed_old": paired_difference(scores["new"], scores["old_trimmed"]),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
