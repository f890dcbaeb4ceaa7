"""How many of the references' character names a summary keeps, compared between stored runs.

    python -m bench.name_recall --data squality-dev --strategy infini \
        --runs runs/dev-infini,runs/dev-store

For every item that all the ``bench.quality`` run directories hold: the reference names are the
proper names of its reference summaries (``infsum.names.mid_sentence_names`` over every reference)
that the book itself mentions (so a reference's own slip is not counted); a summary's recall is the
share of them it names, as whole words. Prints one JSON object: per run the mean recall (percent),
and for every run after the first the paired difference with the first (bootstrap 95% interval,
items better and worse).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench.quality import load_items
from bench.trim_effect import paired_difference, stored_rows
from infsum.names import mid_sentence_names, unsupported_names
from infsum.readers import load_book


def reference_names(references: tuple[str, ...], book_text: str) -> list[str]:
    """The proper names of ``references`` that ``book_text`` mentions, each once, in order."""
    joined = "\n\n".join(references)
    invented = set(unsupported_names(joined, book_text))
    return list(dict.fromkeys(n for n in mid_sentence_names(joined) if n not in invented))


def recall(summary: str, names: list[str]) -> float:
    """The share of ``names`` that ``summary`` contains as whole words (1.0 when there are none)."""
    if not names:
        return 1.0
    return sum(bool(re.search(rf"\b{re.escape(n)}\b", summary)) for n in names) / len(names)


def main() -> None:
    """Score every run's stored summaries; print the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="squality-dev")
    p.add_argument("--strategy", default="infini")
    p.add_argument("--runs", required=True, help="comma-separated bench.quality run directories")
    args = p.parse_args()
    runs = [Path(r) for r in args.runs.split(",") if r]
    stored = [stored_rows(r, args.strategy) for r in runs]
    items = [i for i in load_items(args.data) if all(i.id in s for s in stored)]
    per_run: list[list[float]] = [[] for _ in runs]
    counts = []
    for item in items:
        names = reference_names(item.references, load_book(item.path).text)
        counts.append(len(names))
        for k, s in enumerate(stored):
            per_run[k].append(recall(s[item.id]["summary"], names))
    by_run = list(zip(map(str, runs), per_run, strict=True))
    out = {
        "items": len(items),
        "mean_reference_names": round(sum(counts) / max(1, len(counts)), 1),
        "recall_percent": {r: round(100 * sum(v) / max(1, len(v)), 1) for r, v in by_run},
        "versus_first": {r: paired_difference(v, per_run[0]) for r, v in by_run[1:]},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
