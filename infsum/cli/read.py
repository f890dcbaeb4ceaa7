"""``infsum read``: what infsum reads from a book (title, author, chapters, or the clean text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .options import BookArg, InputFormat, Password, open_book
from .render import plain


def read_command(
    book: BookArg,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print title, author, words, chapters as JSON.")
    ] = False,
    text: Annotated[bool, typer.Option("--text", help="Print the clean text the model would read.")] = False,
    password: Password = None,
    input_format: InputFormat = None,
) -> None:
    """Show what infsum reads from BOOK: title, author, chapters with word counts."""
    from ..readers import load_book

    if json_out and text:
        raise typer.BadParameter("give --json or --text, not both")
    source = open_book(book, input_format, password)
    b = load_book(source, password=password) if isinstance(source, Path) else source
    if text:
        typer.echo(b.text)
    elif json_out:
        typer.echo(json.dumps(b.to_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(title=plain(f"{b.title or book.name}" + (f" by {b.author}" if b.author else "")))
        table.add_column("#", justify="right")
        table.add_column("chapter")
        table.add_column("words", justify="right")
        for i, c in enumerate(b.chapters, 1):
            table.add_row(str(i), plain(c.title), f"{c.words:,}")
        table.add_section()
        table.add_row("", "total", f"{b.words:,}")
        Console().print(table)
