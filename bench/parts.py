"""The summary in parts against the whole summary and TextRank, per novel, from one read.

    python -m bench.parts --out runs/parts.jsonl                 # the 10 shared novels
    python -m bench.parts --out runs/parts.jsonl --items persuasion,siddhartha

Each novel (``../shared/data/books``) is summarized by infsum's default, whose summary is written in
parts along the book (``--part-words``, default 70), at the reference's length, with its memory
state saved; the whole summary (``--part-words 0``) is then written from that saved state (a state
is always written from whole), so both share one read; TextRank beside them. One JSON line per
novel (resumable: novels already in OUT are skipped), then the means, the paired differences with
bootstrap intervals, and invented names per summary.

With ``--run-dir DIR`` each novel's three summaries are also stored as rows of the quality harness
(``bench.quality``), as strategies ``infini``, ``infini-whole`` and ``textrank``, so that

    python -m bench.quality --data books --strategies lead,textrank,infini,infini-whole --run-dir DIR

tabulates them beside the other strategies without reading the novels again. The ``infini-whole``
row's seconds are the shared read's streaming seconds plus its own writing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.quality import (
    Item,
    ModelSpec,
    PeakRSS,
    Runner,
    item_path,
    load_items,
    result_row,
    write_json_atomic,
)
from infsum.config import SummarizeConfig
from infsum.pipeline import SummaryResult, summarize
from infsum.readers import load_book
from infsum.scoring import bootstrap_ci

MODES = ("parts", "whole", "textrank")
HARNESS = {"parts": "infini", "whole": "infini-whole", "textrank": "textrank"}  # bench.quality's names


def run(item: Item, runner: Runner, run_dir: Path | None = None) -> dict:
    """One novel: Overall (percent) and invented names of each mode; with ``run_dir``, each mode's
    harness row stored there."""
    refs = list(item.references)
    book = load_book(item.path)
    cfg = SummarizeConfig(words=item.ref_words)
    loaded = runner.loaded()
    out: dict[str, tuple[SummaryResult, float, float]] = {}

    def timed(mode: str, call) -> None:
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            result = call()
        out[mode] = result, time.perf_counter() - t0, rss.mb

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.infsum"
        timed("parts", lambda: summarize(book, cfg, references=refs, model=loaded, state_path=state))
        timed("whole", lambda: summarize(book, cfg, references=refs, model=loaded, from_state=state))
    tr_cfg = SummarizeConfig(words=cfg.words, strategy="textrank")
    timed("textrank", lambda: summarize(book, tr_cfg, references=refs))
    parts, whole = out["parts"][0], out["whole"][0]
    row = {"book": item.id, "words": cfg.words, "parts_n": parts.parts, "tokens": parts.tokens}
    for mode in MODES:
        result, seconds, rss_mb = out[mode]
        row[mode] = round(100 * result.rouge.overall, 2)
        row[f"{mode}_invented"] = len(result.unsupported_names)
        row[f"{mode}_summary"] = result.summary
        if run_dir is not None:
            strategy = HARNESS[mode]
            if mode == "whole":  # written from the saved state: add the read it shares with the parts
                seconds += parts.seconds["stream"]
            harness = result_row(
                strategy,
                item,
                book,
                result,
                cfg.words,
                seconds=seconds,
                peak_rss_mb=rss_mb,
                peak_gpu_mb=None,
                where=runner.where(strategy),
                workers=1,
            )
            write_json_atomic(item_path(run_dir, strategy, item), harness)
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
    p.add_argument("--run-dir", type=Path, default=None, help="also store bench.quality rows here")
    args = p.parse_args()
    only = [s.strip() for s in args.items.split(",") if s.strip()]
    items = load_items("books", only=only)
    if not only:
        items.sort(key=lambda i: i.path.stat().st_size)
    done = {}
    if args.out.is_file():
        done = {r["book"]: r for r in map(json.loads, args.out.read_text().splitlines())}
    runner = Runner(ModelSpec())  # infsum's default model, loaded on first need
    for item in items:
        if item.id in done:
            continue
        row = run(item, runner, args.run_dir)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        done[item.id] = row
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_summary")}), flush=True)
    print(json.dumps(report([done[i.id] for i in items if i.id in done]), indent=2))


if __name__ == "__main__":
    main()
