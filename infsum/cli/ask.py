"""``infsum ask BOOK_OR_STATE "question"``: answers from a book's memory, read now or saved before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from .options import (
    ASK_FIELDS,
    InputFormat,
    JsonAlias,
    OutputFormat,
    Password,
    Quiet,
    RunOptions,
    open_book,
    output_format,
    run_options,
)
from .render import ProgressView, document


@run_options(ASK_FIELDS)
def ask_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="BOOK_OR_STATE",
            help="A book (- reads standard input), or a .safetensors state saved by --save-state.",
        ),
    ],
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    *,
    run: RunOptions,
    questions: Annotated[
        list[str] | None, typer.Option("--question", metavar="TEXT", help="Another question (repeatable).")
    ] = None,
    questions_file: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Questions in a text file, one a line.")
    ] = None,
    words: Annotated[int, typer.Option(min=1, help="Length of each answer in words.")] = 100,
    save_state: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Save the memory state after reading the book.")
    ] = None,
    password: Password = None,
    input_format: InputFormat = None,
    fmt: OutputFormat = None,
    json_out: JsonAlias = False,
    quiet: Quiet = False,
) -> None:
    """Answer questions about BOOK_OR_STATE from its memory: a book is read once (keep its state
    with --save-state), a saved state answers without reading anything again."""
    from ..ask import ask, is_state_file, load_questions

    fmt = output_format(fmt, json_out)
    asked = ([] if question is None else [question]) + list(questions or ())
    if questions_file is not None:
        asked += load_questions(questions_file)
    cfg = replace(run, words=words).config(password=password)
    book = source if is_state_file(source) else open_book(source, input_format, password)
    with ProgressView(run.segment_len, quiet) as view:
        result = ask(book, asked, cfg, save_state=save_state, progress=view)
    typer.echo(document(result, fmt))
