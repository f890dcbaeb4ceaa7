"""The summary in parts against the whole summary and TextRank, per novel, from one read.

    python -m bench.parts --out runs/parts.jsonl                 # the 10 shared novels
    python -m bench.parts --out runs/parts.jsonl --items persuasion,siddhartha

Each novel (``../shared/data/books``) is summarized by infsum's default, whose summary is written in
parts along the book (``--part-words``, default 70), at the reference's length, with its memory
state saved; the whole summary (``--part-words 0``) is then written from that saved state (a state
is always written from whole), so both share one read; TextRank beside them. One JSON line per
novel (resumable: novels already in OUT are skipped), then the means, the paired differences with
bootstrap intervals, and invented names per summary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from infsum.config import SummarizeConfig
from infsum.models import load_model
from infsum.pipeline import summarize
from infsum.scoring import bootstrap_ci

BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "books"
MODES = ("parts", "whole", "textrank")


def run(name: str, loaded) -> dict:
    """One novel: Overall (percent) and invented names of each mode."""
    book, ref = BOOKS / name / "text.txt", (BOOKS / name / "summary.txt").read_text(encoding="utf-8")
    cfg = SummarizeConfig(words=len(ref.split()))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.infsum"
        parts = summarize(book, cfg, references=[ref], model=loaded, state_path=state)
        whole = summarize(book, cfg, references=[ref], model=loaded, from_state=state)
    textrank = summarize(book, SummarizeConfig(words=cfg.words, strategy="textrank"), references=[ref])
    row = {"book": name, "words": cfg.words, "parts_n": parts.parts, "tokens": parts.tokens}
    for mode, r in zip(MODES, (parts, whole, textrank), strict=True):
        row[mode] = round(100 * r.rouge.overall, 2)
        row[f"{mode}_invented"] = len(r.unsupported_names)
        row[f"{mode}_summary"] = r.summary
    row["seconds"] = {"parts": parts.seconds, "whole": whole.seconds}
    return row


def report(rows: list[dict]) -> dict:
    """Means with intervals, paired differences, wins and losses, invented names per summary."""
    out: dict = {"n": len(rows)}
    for mode in MODES:
        v = [r[mode] for r in rows]
        out[mode] = {"overall": round(sum(v) / len(v), 2), "ci": bootstrap_ci(v) if len(v) >= 5 else None}
        out[mode]["invented"] = round(sum(r[f"{mode}_invented"] for r in rows) / len(rows), 2)
    for a, b in (("parts", "textrank"), ("parts", "whole"), ("whole", "textrank")):
        d = [r[a] - r[b] for r in rows]
        out[f"{a}-{b}"] = {
            "delta": round(sum(d) / len(d), 2),
            "ci": bootstrap_ci(d) if len(d) >= 5 else None,
            "wins": sum(x > 0 for x in d),
            "losses": sum(x < 0 for x in d),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per novel (resumable)")
    p.add_argument("--items", default="", help="comma-separated novels (default: all, shortest first)")
    args = p.parse_args()
    names = (
        args.items.split(",")
        if args.items
        else sorted(
            (d.name for d in BOOKS.iterdir() if d.is_dir()),
            key=lambda n: (BOOKS / n / "text.txt").stat().st_size,
        )
    )
    done = {}
    if args.out.is_file():
        done = {r["book"]: r for r in map(json.loads, args.out.read_text().splitlines())}
    loaded = None
    for name in names:
        if name in done:
            continue
        loaded = loaded or load_model()
        row = run(name, loaded)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        done[name] = row
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_summary")}), flush=True)
    print(json.dumps(report([done[n] for n in names if n in done]), indent=2))


if __name__ == "__main__":
    main()
