"""How often ``infsum.coverage`` puts a sentence in the right tenth of its book, on summaries whose
sentences are the book's own (lead and TextRank), so each sentence's true place is known.

Usage (from the repository root, after ``bench.quality`` has run lead and textrank):

    python -m bench.coverage_check --data squality-dev --run-dir runs/sq

Per strategy: the summary sentences found verbatim in the book (by their first 60 characters),
and the shares placed in the right tenth (or within 1% of the book of their true place), in a
wrong tenth, and unmatched. Prints one JSON object per strategy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.quality import load_items
from infsum.coverage import PassageIndex, tenth
from infsum.readers import load_book

PREFIX = 60  # characters of a sentence looked up in the book


def check(run_dir: Path, data: str, strategy: str) -> dict:
    """Placement of the verbatim sentences of ``strategy``'s stored summaries in ``run_dir``."""
    items = {i.id: i for i in load_items(data)}
    right = wrong = unmatched = missing = 0
    for path in sorted((run_dir / "items" / strategy).glob("*.json")):
        row = json.loads(path.read_text(encoding="utf-8"))
        text = load_book(items[row["item"]].path).text
        words = len(text.split())
        for m in PassageIndex(text).coverage(row["summary"]).sentences:
            at = text.find(m.text[:PREFIX])
            if at < 0:  # the summary's whitespace differs from the book's
                missing += 1
            elif m.position is None:
                unmatched += 1
            else:
                true = len(text[:at].split()) / words
                ok = abs(m.position - true) <= 0.01 or tenth(m.position) == tenth(true)
                right += ok
                wrong += not ok
    n = right + wrong + unmatched
    return {
        "strategy": strategy,
        "sentences": n,
        "not_found": missing,
        "right_tenth": round(right / n, 3) if n else None,
        "wrong_tenth": round(wrong / n, 3) if n else None,
        "unmatched": round(unmatched / n, 3) if n else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the check for each strategy; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="squality-dev", help="squality-dev, books or a directory")
    p.add_argument("--run-dir", type=Path, required=True, help="a bench.quality run directory")
    p.add_argument("--strategies", default="lead,textrank", help="extractive strategies only")
    args = p.parse_args(argv)
    for strategy in args.strategies.split(","):
        print(json.dumps({"data": args.data, **check(args.run_dir, args.data, strategy.strip())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
