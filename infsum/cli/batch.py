"""``infsum batch``: every book in a folder, resumable; a table of outcomes and mean ROUGE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .options import Quiet, RunOptions, run_options
from .render import ProgressView, batch_table


@run_options()
def batch_command(
    directory: Annotated[Path, typer.Argument(help="Folder of books (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for summaries and results.jsonl.")],
    refs: Annotated[Path | None, typer.Option(help="Folder of references named by book stem.")] = None,
    *,
    run: RunOptions,
    quiet: Quiet = False,
) -> None:
    """Summarize every book under DIRECTORY into OUT; a rerun resumes where the last one stopped."""
    from ..batch import run_batch

    with ProgressView(run.segment_len, quiet) as view:
        report = run_batch(directory, out, run.config(), refs_dir=refs, progress=view)
    Console().print(batch_table(report))
    for o in report.failed:
        typer.secho(f"failed: {o.book}: {o.message}", fg="red", err=True)
    if report.failed:
        raise typer.Exit(1)
