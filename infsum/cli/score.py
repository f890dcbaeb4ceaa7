"""``infsum score``: ROUGE of an existing summary against references; with ``--book``, where the
summary's and each reference's sentences come from in the book, and the names the book never
mentions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..readers import formats
from .render import coverage_table, rouge_table


def score_command(
    summary: Annotated[Path, typer.Argument(help="The summary file (text or Markdown).")],
    refs: Annotated[list[Path], typer.Argument(metavar="REF...", help="One or more reference summaries.")],
    book: Annotated[
        Path | None,
        typer.Option(
            help=f"The book summarized ({formats()}): adds where each text's sentences come from in it "
            "(by tenths of the book) and the names the book never mentions, leaving out the heading "
            "and footer of infsum's own Markdown."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Score SUMMARY against references with ROUGE-1/2/L/Lsum (best over references)."""
    from ..scoring import read_text_file, score

    summary_text = read_text_file(summary, "summary")
    ref_texts = [read_text_file(r) for r in refs]
    scores = score(summary_text, ref_texts)
    out = scores.to_dict()
    rows = []
    if book is not None:
        from ..coverage import PassageIndex
        from ..names import unsupported_names
        from ..pipeline import summary_body
        from ..readers import load_book

        b = load_book(book)
        index = PassageIndex(b.text)
        for path, text in [(summary, summary_text), *zip(refs, ref_texts, strict=True)]:
            body = summary_body(text)  # infsum's heading and footer are no sentences of the summary
            rows.append((path, index.coverage(body), unsupported_names(body, b.text)))
        grounding = [
            {"path": str(p), "coverage": c.to_dict(), "unsupported_names": n, "invented_names": len(n)}
            for p, c, n in rows
        ]
        out |= {
            "book": {"path": str(book), "words": b.words},
            "summary": grounding[0],
            "references": grounding[1:],
        }
    if json_out:
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    console = Console()
    console.print(rouge_table(scores))
    if rows:
        labels = ["summary", *(f"ref {i}" for i in range(1, len(refs) + 1))]
        console.print(coverage_table([(label, *row) for label, row in zip(labels, rows, strict=True)], book))
