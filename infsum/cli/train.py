"""``infsum train``: train a model's memory gates and LoRA into an adapter file (+ .json card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..config import TrainConfig
from .options import (
    DEFAULT_VARIANT,
    Cast,
    Device,
    EvidenceTokens,
    ExactTokens,
    MemoryVariant,
    Model,
    Quiet,
    float_list,
)


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
    curriculum: Annotated[
        str | None,
        typer.Option(help="Stages of segments per sample, e.g. 2-2,2-4,4-8 (replaces --segments)."),
    ] = None,
    passkey_anywhere: Annotated[
        bool, typer.Option(help="Passkeys at any depth, the last segment too (else before it).")
    ] = False,
    init_adapter: Annotated[
        Path | None, typer.Option(help="Start from this adapter (same rank, variant and rule).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Learning rate of LoRA (or every weight).")] = 3e-4,
    gate_lr: Annotated[float, typer.Option(help="Learning rate of the gates (no weight decay).")] = 5e-2,
    gate_init: Annotated[float, typer.Option(help="Initial gate beta (memory share: sigmoid).")] = -2.0,
    memory_variant: MemoryVariant = DEFAULT_VARIANT,
    exact_tokens: ExactTokens = 0,
    evidence_tokens: EvidenceTokens = TrainConfig.evidence_tokens,
    cast: Cast = TrainConfig.cast,
    part_words: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="Summary examples in parts of about N words too, as `infsum BOOK` writes them; "
            "0 = whole summaries only.",
        ),
    ] = TrainConfig.part_words,
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

    from ..training import train

    stages = tuple(_span(s, "--curriculum") for s in curriculum.split(",")) if curriculum else ()
    cfg = TrainConfig(
        out=out,
        model=model,
        device=device,
        steps=steps,
        batch_size=batch_size,
        segment_len=segment_len,
        segments=_span(segments, "--segments"),
        curriculum=stages,
        passkey_anywhere=passkey_anywhere,
        init_adapter=init_adapter,
        lr=lr,
        gate_lr=gate_lr,
        gate_init=gate_init,
        variant=memory_variant,
        exact_tokens=exact_tokens,
        evidence_tokens=evidence_tokens,
        cast=cast,
        part_words=part_words,
        lora_rank=rank,
        full_finetune=full_finetune,
        mix=float_list(mix, 3),
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


def _span(text: str, option: str) -> tuple[int, int]:
    """'2-4' -> (2, 4): a MIN-MAX number of segments per sample."""
    lo, _, hi = text.strip().partition("-")
    if not (lo.isdigit() and hi.isdigit()):
        raise typer.BadParameter(f"{option} {text!r}: give MIN-MAX, e.g. 2-4")
    return int(lo), int(hi)
