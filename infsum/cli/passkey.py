"""``infsum passkey``: the passkey test of a model's memory, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .options import MODEL_FIELDS, Quiet, RunOptions, float_list, int_list, run_options

Lengths = Annotated[
    str, typer.Option(help="Sample lengths in tokens, comma-separated (k suffix allowed): 4k,16k,64k.")
]
Depths = Annotated[str, typer.Option(help="Key depths as fractions of the filler, comma-separated.")]


@run_options(MODEL_FIELDS)
def passkey_command(
    lengths: Lengths = "4k,16k,64k",
    depths: Depths = "0,0.25,0.5,0.75,1",
    trials: Annotated[int, typer.Option(min=1, help="Samples per length and depth.")] = 5,
    *,
    run: RunOptions,
    filler: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="Prose filler (.txt or .txt.gz); repeatable.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of keys and filler (same prompts for every model).")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print every trial as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """The passkey test: a key hidden in filler at each depth, asked for at the end, answered greedily."""
    from rich.progress import Progress

    from ..engine import ready
    from ..models import load_model
    from ..passkey import run_passkey

    cfg = run.config()
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    infini, adapter_path = ready(loaded, cfg.memory, cfg.adapter)
    tokenizer = loaded.tokenizer
    with Progress(console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("passkey trials", total=None)
        report = run_passkey(
            infini,
            tokenizer=tokenizer,
            lengths=int_list(lengths),
            depths=float_list(depths),
            trials=trials,
            segment_len=run.segment_len,
            memory=run.memory == "on",
            seed=seed,
            filler=tuple(filler or ()),
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_out:
        typer.echo(
            json.dumps({**report.to_dict(), "adapter": str(adapter_path) if adapter_path else None}, indent=2)
        )
        return
    table = Table(
        title=f"passkey accuracy ({trials} trials per cell, memory {run.memory}, "
        f"{'adapter ' + adapter_path.name if adapter_path else 'no adapter'})"
    )
    table.add_column("tokens", justify="right")
    for d in report.depths:
        table.add_column(f"depth {d:g}", justify="right")
    for n, accs in report.rows():
        table.add_row(f"{n:,}", *(f"{a:.0%}" for a in accs))
    Console().print(table)
