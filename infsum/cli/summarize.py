"""``infsum BOOK`` (the hidden ``summarize`` command): one book to a Markdown summary, and its ROUGE."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .options import (
    BookArg,
    Chapters,
    ChapterWords,
    InputFormat,
    JsonAlias,
    OutputFormat,
    Password,
    Quiet,
    RunOptions,
    note_words,
    open_book,
    output_format,
    run_options,
)
from .render import ProgressView, document, rouge_table

STDOUT = Path("-")


@run_options()
def summarize_command(
    book: BookArg,
    run: RunOptions,
    password: Password = None,
    input_format: InputFormat = None,
    ref: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="Reference summary to score (repeatable).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write <stem>.summary.md and .json here; - is standard output."),
    ] = None,
    fmt: OutputFormat = None,
    json_out: JsonAlias = False,
    save_state: Annotated[Path | None, typer.Option(help="Save the memory state after reading.")] = None,
    state: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write from this saved state of BOOK instead of reading it again."),
    ] = None,
    chapters: Chapters = False,
    chapter_words: ChapterWords = None,
    quiet: Quiet = False,
) -> None:
    """Summarize BOOK: stream it through the model and print a Markdown summary."""
    from ..batch import write_outputs
    from ..pipeline import summarize
    from ..scoring import read_text_file

    fmt = output_format(fmt, json_out)
    references = [read_text_file(r) for r in ref or ()]  # fail on a bad reference before the model runs
    cfg = run.config(password=password, chapter_words=note_words(chapters, chapter_words))
    source = open_book(book, input_format, password)
    with ProgressView(run.segment_len, quiet) as view:
        result = summarize(
            source, cfg, references=references, progress=view, state_path=save_state, from_state=state
        )
    # the summary reaches stdout first: if the files below cannot be written, nothing is lost
    typer.echo(document(result, fmt))
    if out is not None and out != STDOUT:
        stem = book.stem if isinstance(source, Path) else "stdin"
        md, js = out / f"{stem}.summary.md", out / f"{stem}.summary.json"
        write_outputs(result, md, js)
        if not quiet:
            typer.echo(f"wrote {md} and {js}", err=True)
    if result.rouge and fmt != "json":
        Console(stderr=True).print(rouge_table(result.rouge))
