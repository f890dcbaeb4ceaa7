"""``infsum batch``: every book in a folder, resumable; a table of outcomes and mean ROUGE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .options import Chapters, ChapterWords, Quiet, RunOptions, note_words, run_options
from .render import ProgressView, batch_table


@run_options()
def batch_command(
    directory: Annotated[Path, typer.Argument(help="Folder of books (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for summaries and results.jsonl.")],
    refs: Annotated[Path | None, typer.Option(help="Folder of references named by book stem.")] = None,
    *,
    run: RunOptions,
    chapters: Chapters = False,
    chapter_words: ChapterWords = None,
    parallel: Annotated[
        int,
        typer.Option(
            min=1,
            help="Books streamed side by side, one row of a batch each (infini strategy; "
            "pays off on a GPU, docs/speed.md).",
        ),
    ] = 1,
    quiet: Quiet = False,
) -> None:
    """Summarize every book under DIRECTORY into OUT (with --chapters, a note on each chapter
    too); a rerun resumes where the last one stopped."""
    from ..batch import run_batch

    cfg = run.config(chapter_words=note_words(chapters, chapter_words))
    with ProgressView(run.segment_len, quiet) as view:
        report = run_batch(directory, out, cfg, refs_dir=refs, progress=view, parallel=parallel)
    Console().print(batch_table(report))
    for o in report.failed:
        typer.secho(f"failed: {o.book}: {o.message}", fg="red", err=True)
    if report.failed:
        raise typer.Exit(1)
