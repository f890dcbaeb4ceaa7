"""The memory commands of the CLI: ``infsum passkey`` and ``infsum train`` (parsing and rendering only).

Registered on the main Typer app by ``infsum.cli``; the work is in ``infsum.passkey`` and
``infsum.training``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli import Adapter, Device, Memory, Model, NoAdapter, Quiet, SegmentLen
from .config import MemoryConfig, SummarizeConfig

Lengths = Annotated[
    str, typer.Option(help="Sample lengths in tokens, comma-separated (k suffix allowed): 4k,16k,64k.")
]
Depths = Annotated[str, typer.Option(help="Key depths as fractions of the filler, comma-separated.")]


def _ints(text: str) -> tuple[int, ...]:
    """'4k,16384' -> (4096, 16384)."""
    try:
        return tuple(
            int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x)
            for x in text.split(",")
            if x.strip()
        )
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of token counts") from None


def _floats(text: str, n: int | None = None) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0); n = how many values are required."""
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None
    if n is not None and len(out) != n:
        raise typer.BadParameter(f"{text!r} needs exactly {n} comma-separated numbers")
    return out


def passkey_command(
    lengths: Lengths = "4k,16k,64k",
    depths: Depths = "0,0.25,0.5,0.75,1",
    trials: Annotated[int, typer.Option(min=1, help="Samples per length and depth.")] = 5,
    model: Model = None,
    segment_len: SegmentLen = 2048,
    memory: Memory = "on",
    adapter: Adapter = None,
    no_adapter: NoAdapter = False,
    device: Device = "auto",
    filler: Annotated[
        list[Path] | None, typer.Option(metavar="FILE", help="Prose filler (.txt or .txt.gz); repeatable.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of keys and filler (same prompts for every model).")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print every trial as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """The passkey test: a key hidden in filler at each depth, asked for at the end, answered greedily."""
    from rich.progress import Progress

    from .passkey import run_passkey
    from .pipeline import Summarizer

    cfg = SummarizeConfig(
        model=model,
        device=device,
        memory=MemoryConfig(segment_len=segment_len),
        adapter=None if no_adapter else (str(adapter) if adapter else "default"),
    )
    summarizer = Summarizer(cfg)
    infini, adapter_path = summarizer.infini(lambda step: None)
    tokenizer = summarizer.loaded(lambda step: None).tokenizer
    with Progress(console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("passkey trials", total=None)
        report = run_passkey(
            infini,
            tokenizer=tokenizer,
            lengths=_ints(lengths),
            depths=_floats(depths),
            trials=trials,
            segment_len=segment_len,
            memory=memory == "on",
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
        title=f"passkey accuracy ({trials} trials per cell, memory {memory}, "
        f"{'adapter ' + adapter_path.name if adapter_path else 'no adapter'})"
    )
    table.add_column("tokens", justify="right")
    for d in report.depths:
        table.add_column(f"depth {d:g}", justify="right")
    for n, accs in report.rows():
        table.add_row(f"{n:,}", *(f"{a:.0%}" for a in accs))
    Console().print(table)


def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Adapter file to write (+ .json card).")] = Path(
        "adapter.safetensors"
    ),
    model: Model = None,
    corpus: Annotated[
        list[Path] | None, typer.Option(help="Books (.txt/.txt.gz) or folders of them; repeatable.")
    ] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Corpus file names to hold out.")] = None,
    summaries: Annotated[
        list[Path] | None, typer.Option(help="jsonl of {document, summary} or SQuALITY records.")
    ] = None,
    mix: Annotated[str, typer.Option(help="Shares of lm,passkey,summary examples.")] = "0.2,0.6,0.2",
    steps: Annotated[int, typer.Option(min=1)] = 400,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per step per process.")] = 8,
    segment_len: Annotated[int, typer.Option(min=16, help="Tokens per training segment.")] = 512,
    segments: Annotated[str, typer.Option(help="Segments per sample, MIN-MAX.")] = "2-4",
    lr: Annotated[float, typer.Option(help="Learning rate of LoRA (or every weight).")] = 3e-4,
    gate_lr: Annotated[float, typer.Option(help="Learning rate of the gates (no weight decay).")] = 5e-2,
    gate_init: Annotated[float, typer.Option(help="Initial gate beta (memory share: sigmoid).")] = -2.0,
    rank: Annotated[int, typer.Option(min=0, help="LoRA rank on q/k/v/o; 0 trains the gates only.")] = 8,
    full_finetune: Annotated[bool, typer.Option(help="Train every weight (also writes a model).")] = False,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Resumable checkpoints go here.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from --checkpoint-dir.")] = False,
    max_minutes: Annotated[float | None, typer.Option(help="Stop (and save) after this long.")] = None,
    device: Device = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the adapter card as JSON.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train the memory gates and LoRA of a model; run under `accelerate launch` for several GPUs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .config import TrainConfig
    from .training import train

    lo, _, hi = segments.partition("-")
    if not (lo.isdigit() and hi.isdigit()):
        raise typer.BadParameter(f"--segments {segments!r}: give MIN-MAX, e.g. 2-4")
    cfg = TrainConfig(
        out=out,
        model=model,
        device=device,
        steps=steps,
        batch_size=batch_size,
        segment_len=segment_len,
        segments=(int(lo), int(hi)),
        lr=lr,
        gate_lr=gate_lr,
        gate_init=gate_init,
        lora_rank=rank,
        full_finetune=full_finetune,
        mix=_floats(mix, 3),
        corpus=tuple(corpus or ()),
        exclude=tuple(exclude or ()),
        summaries=tuple(summaries or ()),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        seed=seed,
        max_seconds=max_minutes * 60 if max_minutes else None,
    )
    columns = (
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=quiet) as bar:
        task = bar.add_task("train", total=steps, stats="")
        result = train(
            cfg,
            progress=lambda s: bar.update(
                task,
                completed=s.step,
                stats=(f"loss {s.loss:.3f}  {s.tokens_per_s:,.0f} tok/s  gate {s.gate_max:.2f}"),
            ),
        )
    if json_out:
        typer.echo(json.dumps(result.card, indent=2))
        return
    table = Table(title=f"wrote {result.adapter} (+ .json card)")
    for col in ("steps", "tokens seen", "tok/s", "last loss", "minutes"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.steps),
        f"{result.tokens_seen:,}",
        f"{result.tokens_per_s:,.0f}",
        f"{result.losses[-1]:.3f}" if result.losses else "-",
        f"{result.seconds / 60:.1f}",
    )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``passkey`` and ``train`` to ``app``."""
    app.command("passkey")(passkey_command)
    app.command("train")(train_command)
