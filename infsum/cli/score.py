"""``infsum score``: ROUGE of an existing summary against references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .render import rouge_table


def score_command(
    summary: Annotated[Path, typer.Argument(help="The summary file (text or Markdown).")],
    refs: Annotated[list[Path], typer.Argument(metavar="REF...", help="One or more reference summaries.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Score SUMMARY against references with ROUGE-1/2/L/Lsum (best over references)."""
    from ..scoring import score_files

    scores = score_files(summary, refs)
    if json_out:
        typer.echo(json.dumps(scores.to_dict(), indent=2))
    else:
        Console().print(rouge_table(scores))
