"""The ``infsum`` command line: parsing arguments and rendering results with rich; nothing else.

This module holds the Typer ``app`` (routing ``infsum BOOK`` to the hidden ``summarize`` command,
turning an ``InfsumError`` into one red line and exit code 2, the root --version and -v options)
and registers the commands, one module per command: ``summarize``, ``read``, ``ask``, ``score``,
``batch``, ``passkey``, ``train``. Options shared between commands are in ``options``, rendering
in ``render``, logging to stderr in ``logs``. Nothing here imports torch: the commands import the library in
their bodies, so ``infsum --help`` stays fast.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer
from typer.core import TyperGroup, TyperOption

from .. import __version__
from ..errors import InfsumError
from . import ask, batch, logs, passkey, read, score, summarize, train

__all__ = ["app", "main"]

_VERBOSE = re.compile(r"-v+|--verbose")  # the root's -v, which no command uses for anything else

EXAMPLES = """\
Examples:

\b
  infsum book.txt
      summarize a book with the default model; Markdown to stdout
  infsum book.epub --words 200 -o out/ --ref ref.txt
      write out/book.summary.md and .json, and score against a reference
  infsum read book.pdf --json
      show what infsum reads from a book
  infsum ask book.epub "Who is the narrator?" --save-state book.safetensors
      answer from the book's memory; later: infsum ask book.safetensors "..."
  infsum score summary.md ref1.txt ref2.txt
      ROUGE of an existing summary, best over the references
  infsum batch books/ -o out/
      every book in a folder; run it again to resume
"""


class DefaultCommandGroup(TyperGroup):
    """``infsum BOOK ...``: a first argument (after the root flags) that is not a command goes to the
    hidden ``summarize``; an ``InfsumError`` from any command becomes one red line on stderr and exit
    code 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        """``args`` with ``summarize`` put in front of a first argument that names no command, and
        -v/--verbose moved to the front from wherever it was given (``infsum book.txt -v``)."""
        end = args.index("--") if "--" in args else len(args)  # after --, everything is an argument
        verbose = [a for a in args[:end] if _VERBOSE.fullmatch(a)]
        args = verbose + [a for a in args[:end] if not _VERBOSE.fullmatch(a)] + args[end:]
        n = 0
        while n < len(args) and self._is_root_flag(args[n]):
            n += 1
        if n < len(args) and args[n] not in self.commands and args[n] not in ("--help", "--version"):
            args = [*args[:n], "summarize", *args[n:]]
        return super().parse_args(ctx, args)

    def _is_root_flag(self, arg: str) -> bool:
        """Whether ``arg`` is one of the root's value-less options (or a cluster of them: -vv)."""
        flags = {
            opt
            for p in self.params
            if isinstance(p, TyperOption) and (p.is_flag or p.count) and not p.is_eager
            for opt in p.opts
        }
        short = {f[1] for f in flags if len(f) == 2}
        return arg in flags or (len(arg) > 1 and arg[0] == "-" and arg[1] != "-" and set(arg[1:]) <= short)

    def invoke(self, ctx: typer.Context):
        """Run the command; an ``InfsumError`` becomes ``error: <message>`` in red and exit code 2."""
        try:
            return super().invoke(ctx)
        except InfsumError as e:
            if os.environ.get("INFSUM_DEBUG") == "1":
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Summarize whole books (EPUB, PDF, text) with an Infini-attention model, in constant memory.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    subcommand_metavar="BOOK [OPTIONS] | COMMAND [ARGS]...",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"infsum {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            show_default=False,
            help="Also show info messages on stderr; -vv adds debug messages.",
        ),
    ] = 0,
) -> None:
    """Summarize whole books (EPUB, PDF, text) with an Infini-attention model, in constant memory.

    Run `infsum BOOK` to summarize a book; the commands below do the rest.
    """
    logs.configure(ctx, verbose)


app.command("summarize", hidden=True)(summarize.summarize_command)
app.command("read")(read.read_command)
app.command("ask")(ask.ask_command)
app.command("score")(score.score_command)
app.command("batch")(batch.batch_command)
app.command("passkey")(passkey.passkey_command)
app.command("train")(train.train_command)


def main() -> None:
    """Entry point of the ``infsum`` console script."""
    app()
