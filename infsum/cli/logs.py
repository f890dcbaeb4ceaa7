"""What the ``infsum`` logger says on stderr: warnings by default, info with -v, debug with -vv,
nothing below errors with --quiet. The library only logs; this is the one place that configures.

Each record becomes one plain line, ``warning: <message>``, never a traceback. The setup lasts one
command and is undone when it ends, so running commands in-process (tests) leaves logging as found.
"""

from __future__ import annotations

import logging

import typer

LOGGER = "infsum"


class StderrLines(logging.Handler):
    """Writes each record as ``<level>: <message>`` on one line of the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        """One line: the level in lower case, the message with its line breaks flattened."""
        try:
            message = " ".join(record.getMessage().split("\n"))
            typer.echo(f"{record.levelname.lower()}: {message}", err=True)
        except Exception:  # a logging call must never break the command
            self.handleError(record)


_handler = StderrLines()


def configure(ctx: typer.Context, verbosity: int) -> None:
    """Show the ``infsum`` logger on stderr for the command run under ``ctx``: from warnings
    (verbosity 0), info (1) or debug (2 and more); undone when ``ctx`` closes."""
    logger = logging.getLogger(LOGGER)
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    previous = logger.level
    _handler.setLevel(level)
    logger.addHandler(_handler)
    if verbosity:
        logger.setLevel(level)

    def undo() -> None:
        logger.removeHandler(_handler)
        logger.setLevel(previous)

    ctx.call_on_close(undo)


def silence() -> None:
    """Hide everything below errors (a command's --quiet)."""
    _handler.setLevel(logging.ERROR)
