"""``infsum BOOK`` (the hidden ``summarize`` command): one book to a Markdown summary, and its ROUGE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .options import BookArg, Password, Quiet, RunOptions, run_options
from .render import ProgressView, rouge_table


@run_options()
def summarize_command(
    book: BookArg,
    run: RunOptions,
    password: Password = None,
    ref: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="Reference summary to score (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write <stem>.summary.md and .json here.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of Markdown.")
    ] = False,
    save_state: Annotated[Path | None, typer.Option(help="Save the memory state after reading.")] = None,
    quiet: Quiet = False,
) -> None:
    """Summarize BOOK: stream it through the model and print a Markdown summary."""
    from ..batch import write_outputs
    from ..pipeline import summarize
    from ..scoring import read_text_file

    references = [read_text_file(r) for r in ref or ()]  # fail on a bad reference before the model runs
    cfg = run.config(password=password)
    with ProgressView(run.segment_len, quiet) as view:
        result = summarize(book, cfg, references=references, progress=view, state_path=save_state)
    # the summary reaches stdout first: if the files below cannot be written, nothing is lost
    typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if json_out else result.markdown())
    if out is not None:
        md, js = out / f"{book.stem}.summary.md", out / f"{book.stem}.summary.json"
        write_outputs(result, md, js)
        if not quiet:
            typer.echo(f"wrote {md} and {js}", err=True)
    if result.rouge and not json_out:
        Console(stderr=True).print(rouge_table(result.rouge))
