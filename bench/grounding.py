"""Prompt and decoding ablation for the infini summary: each book is streamed through the memory
once, then summarized under several variants from that same state (the state is a value: one read
serves every ask), and every variant is scored like ``bench/quality.py`` scores a strategy.

Usage (from the repository root):

    python -m bench.grounding --data DIR --limit 8 --run-dir runs/grounding \\
        --variants plain,evidence-1024,evidence-1024-cast5

A variant is ``plain``, ``evidence-N`` (N tokens of the book's central passages in the final
prompt), ``cast-K`` (the K main characters named) or ``evidence-N-castK``, optionally followed by
decoding overrides ``+rp1.05`` (repetition penalty), ``+ng0`` (no-repeat n-gram size), ``+t0.7``
(temperature, seed 0), ``+sn20`` (the tokens of the book's 20 most mentioned names spared by the
repetition rules). ``lead`` and ``textrank`` rows are added (they need no model), so the
output's paired table compares every variant with TextRank. Rows are stored per (variant, item)
under ``RUN_DIR/items`` in ``bench/quality.py``'s format (a rerun resumes); ``table.md``,
``versus.md`` and JSON beside them. Data: ``bench/quality.py``'s layouts (squality-dev, books, or a
directory).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.quality import (
    Item,
    item_path,
    load_items,
    table_markdown,
    versus,
    versus_markdown,
    write_json_atomic,
    write_outputs,
)
from infsum.config import GenerationConfig, SummarizeConfig
from infsum.names import TOP, characters, unsupported_names
from infsum.prompt import INSTRUCTION, book_tokens, trim_to_sentence, trim_to_words
from infsum.readers import load_book
from infsum.scoring import score

_VARIANT = re.compile(r"^(plain|evidence-(\d+)(?:-cast(\d+))?|cast-(\d+))((?:\+[a-z]+[0-9.]+)*)$")
_OVERRIDES = {"rp": "repetition_penalty", "ng": "no_repeat_ngram", "t": "temperature", "sn": "spare_names"}
_INTS = {"no_repeat_ngram", "spare_names"}


@dataclass(frozen=True)
class Variant:
    """One way to write the summary from a read state."""

    name: str
    evidence_tokens: int
    cast: int
    generation: GenerationConfig


def parse_variant(name: str, base: GenerationConfig) -> Variant:
    """``evidence-1024-cast5+rp1.05`` -> Variant; SystemExit naming the grammar when it does not parse."""
    m = _VARIANT.match(name)
    if not m:
        sys.exit(
            f"variant {name!r}: use plain, evidence-N, cast-K or evidence-N-castK, then +rpX +ngN +tX +snN"
        )
    evidence = int(m.group(2) or 0)
    cast = int(m.group(3) or m.group(4) or 0)
    gen = base
    for key, value in re.findall(r"\+([a-z]+)([0-9.]+)", m.group(5)):
        if key not in _OVERRIDES:
            sys.exit(f"variant {name!r}: unknown override +{key} (use {', '.join(_OVERRIDES)})")
        field = _OVERRIDES[key]
        gen = replace(gen, **{field: int(value) if field in _INTS else float(value)})
        if field == "temperature":
            gen = replace(gen, seed=0)
    return Variant(name, evidence, cast, gen)


def run_item(
    variants: Sequence[Variant], item: Item, run_dir: Path, summarizer, state_dir: Path | None = None
) -> list[dict]:
    """Stream ``item`` once and write every pending variant's summary (and, with ``state_dir``, save
    the state there as ``ITEM.safetensors``); returns the new rows."""
    from infsum.engine import InfiniReader, save_state
    from infsum.evidence import central_passages, summary_ask
    from infsum.progress import ignore
    from infsum.strategies import answer

    todo = [v for v in variants if not item_path(run_dir, v.name, item).is_file()]
    if not todo:
        return []
    book = load_book(item.path)
    words = item.ref_words
    loaded = summarizer.loaded(ignore)
    model, _adapter = summarizer.infini(ignore)
    tok = loaded.tokenizer
    reader = InfiniReader(model)
    t0 = time.perf_counter()
    ids, _starts = book_tokens(tok, book)
    state = reader.read(ids)
    stream_s = time.perf_counter() - t0
    state_bytes = None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        save_state(state, state_dir / f"{item.id}.safetensors")
        state_bytes = (state_dir / f"{item.id}.safetensors").stat().st_size
        print(f"state of {item.id}: {len(ids):,} tokens, {state_bytes:,} bytes", flush=True)
    top = max(TOP, *(v.cast for v in todo), *(v.generation.spare_names for v in todo))
    names = characters((c.text for c in book.chapters), top=top)
    rows = []
    for v in todo:
        t0 = time.perf_counter()
        passages = central_passages(book.text, tok, v.evidence_tokens)
        ask = summary_ask(INSTRUCTION.format(words=words), passages, names[: v.cast])
        text, gen = answer(reader, state, tok, ask, words, v.generation, names=names)
        summary = trim_to_words(trim_to_sentence(text), words)  # as the pipeline trims it
        row = {
            "strategy": v.name,
            "item": item.id,
            "words_target": words,
            "summary_words": len(summary.split()),
            "book_words": book.words,
            "seconds": round(stream_s + time.perf_counter() - t0, 3),  # as if streamed for this variant
            "peak_rss_mb": 0.0,  # one process serves every variant: not measured per variant
            "peak_gpu_mb": None,
            "device": str(loaded.device),
            "scores": score(summary, item.references).to_dict(),
            "unsupported_names": unsupported_names(summary, book.text),
            "evidence_tokens": v.evidence_tokens,
            "cast": v.cast,
            "generation": {k: getattr(gen, k) for k in _OVERRIDES.values()},
            "tokens": len(ids),
            "state_bytes": state_bytes,
            "summary": summary,
        }
        write_json_atomic(item_path(run_dir, v.name, item), row)
        rows.append(row)
        print(f"{v.name:>28} {item.id:<24} overall {100 * rows[-1]['scores']['overall']:.1f}", flush=True)
    return rows


def extractive_rows(item: Item, run_dir: Path) -> None:
    """Store lead and TextRank rows for ``item`` (no model), as ``bench/quality.py`` would."""
    from infsum.extractive import lead, textrank

    book = None
    for name, fn in (("lead", lead), ("textrank", textrank)):
        path = item_path(run_dir, name, item)
        if path.is_file():
            continue
        book = book or load_book(item.path)
        summary = fn(book.text, item.ref_words)
        write_json_atomic(
            path,
            {
                "strategy": name,
                "item": item.id,
                "words_target": item.ref_words,
                "summary_words": len(summary.split()),
                "book_words": book.words,
                "seconds": 0.0,
                "peak_rss_mb": 0.0,
                "peak_gpu_mb": None,
                "device": "cpu",
                "scores": score(summary, item.references).to_dict(),
                "unsupported_names": unsupported_names(summary, book.text),
                "summary": summary,
            },
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablation; returns the exit code."""
    import json

    from infsum.pipeline import Summarizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="squality-dev", help="squality-dev, books or a directory")
    p.add_argument("--variants", default="plain,evidence-1024", help="comma-separated variants")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--items", default="", help="comma-separated item ids, in this order")
    p.add_argument("--run-dir", type=Path, required=True, help="resumable output directory")
    p.add_argument("--report-only", action="store_true", help="tabulate stored rows, run nothing")
    p.add_argument("--state-dir", type=Path, default=None, help="save each item's state here")
    args = p.parse_args(argv)
    base = SummarizeConfig()
    variants = [parse_variant(v.strip(), base.generation) for v in args.variants.split(",") if v.strip()]
    items = load_items(args.data, limit=args.limit, only=[s for s in args.items.split(",") if s])
    summarizer = Summarizer(base)
    if not args.report_only:
        for item in items:
            extractive_rows(item, args.run_dir)
            run_item(variants, item, args.run_dir, summarizer, args.state_dir)
    names = ["lead", "textrank", *(v.name for v in variants)]
    rows = [
        json.loads(item_path(args.run_dir, n, i).read_text())
        for n in names
        for i in items
        if item_path(args.run_dir, n, i).is_file()
    ]
    entries = write_outputs(args.run_dir, rows)
    paired = versus(rows, "textrank")
    write_json_atomic(args.run_dir / "versus.json", {"baseline": "textrank", "rows": paired})
    (args.run_dir / "versus.md").write_text(versus_markdown(paired, "textrank"), encoding="utf-8")
    print(table_markdown(entries) + "\n" + versus_markdown(paired, "textrank"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
