"""The ``infsum`` command line: parsing arguments and rendering results with rich; nothing else."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__
from .config import GenerationConfig, MemoryConfig, SummarizeConfig
from .errors import InfsumError

ROUGE_ROWS = (
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("rougeLsum", "ROUGE-Lsum"),
)

EXAMPLES = """\
Examples:

\b
  infsum book.txt
      summarize a book with the default model; Markdown to stdout
  infsum book.epub --words 200 -o out/ --ref ref.txt
      write out/book.summary.md and .json, and score against a reference
  infsum read book.pdf --json
      show what infsum reads from a book
  infsum score summary.md ref1.txt ref2.txt
      ROUGE of an existing summary, best over the references
  infsum batch books/ -o out/
      every book in a folder; run it again to resume
"""


class DefaultCommandGroup(TyperGroup):
    """``infsum BOOK ...``: a first argument that is not a command goes to the hidden ``summarize``;
    an ``InfsumError`` from any command becomes one red line on stderr and exit code 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "--version"):
            args = ["summarize", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
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
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Summarize whole books (EPUB, PDF, text) with an Infini-attention model, in constant memory.

    Run `infsum BOOK` to summarize a book; the commands below do the rest.
    """


# -- options shared by the summarize and batch commands

Words = Annotated[int, typer.Option(min=1, help="Target summary length in words.")]
Model = Annotated[
    str | None, typer.Option(help="Model name or local directory [default: SmolLM2-135M-Instruct].")
]
SegmentLen = Annotated[int, typer.Option(min=1, help="Tokens per segment streamed through the model.")]
Update = Annotated[Literal["delta", "linear"], typer.Option(help="Memory update rule.")]
Memory = Annotated[Literal["on", "off"], typer.Option(help="off: local attention only.")]
Temperature = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")]
Seed = Annotated[int | None, typer.Option(help="Random seed for sampling.")]
Device = Annotated[Literal["auto", "cpu", "cuda", "mps"], typer.Option(help="Where the model runs.")]
Strategy = Annotated[
    Literal["infini", "lead", "textrank", "truncate-head", "truncate-tail", "hierarchical"],
    typer.Option(help="infini streams the whole book; the others are baselines (see README)."),
]
Adapter = Annotated[Path | None, typer.Option(help="Gate adapter file [default: the shipped one].")]
NoAdapter = Annotated[bool, typer.Option("--no-adapter", help="Run without any gate adapter.")]
Password = Annotated[str | None, typer.Option(help="Password of an encrypted PDF.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")]


def build_config(
    *,
    words,
    model,
    segment_len,
    update,
    memory,
    temperature,
    seed,
    device,
    strategy,
    adapter,
    no_adapter,
    password=None,
) -> SummarizeConfig:
    """A ``SummarizeConfig`` from command-line values."""
    return SummarizeConfig(
        model=model,
        adapter=None if no_adapter else (str(adapter) if adapter else "default"),
        device=device,
        strategy=strategy,
        words=words,
        memory=MemoryConfig(segment_len=segment_len, update=update, enabled=memory == "on"),
        generation=GenerationConfig(temperature=temperature, seed=seed),
        password=password,
    )


class ProgressView:
    """Renders pipeline ``Step``s as rich progress bars on stderr; silent when stderr is not a
    terminal or with --quiet."""

    def __init__(self, segment_len: int, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self.segment_len = segment_len
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, int] = {}
        self.stream_start = 0.0

    def __enter__(self) -> ProgressView:
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()

    def __call__(self, step) -> None:
        if not self.enabled:
            return
        if step.stage == "stream":
            self._show(
                "stream",
                "reading " + (step.detail or ""),
                -(-step.done // self.segment_len),
                -(-step.total // self.segment_len),
                self._rate(step.done),
            )
        elif step.stage == "load":
            self._show("load", step.detail or "loading model", step.done, step.total)
        elif step.stage == "generate":
            self._show("generate", "writing summary", step.done, step.total)
        elif step.stage == "book":
            for stage in ("stream", "generate", "load"):  # a new book starts fresh bars
                if stage in self.tasks:
                    self.bar.remove_task(self.tasks.pop(stage))
            self._show("book", f"book {step.detail or ''}", step.done, step.total)

    def _rate(self, tokens: int) -> str:
        if tokens == 0 or not self.stream_start:
            self.stream_start = time.perf_counter()
            return ""
        return f"{tokens / max(time.perf_counter() - self.stream_start, 1e-9):,.0f} tok/s"

    def _show(self, key: str, description: str, done: int, total: int, rate: str = "") -> None:
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(description, total=total, rate=rate)
        self.bar.update(self.tasks[key], description=description, completed=done, total=total, rate=rate)


def plain(text: str) -> Text:
    """Text taken from a book or a path, for rich: never parsed as markup, control bytes dropped."""
    return Text("".join(ch if ch.isprintable() else " " for ch in text))


def rouge_table(scores, title: str = "ROUGE (best over references)") -> Table:
    """Precision, recall and F1 of each ROUGE metric, and the overall geometric mean."""
    table = Table(title=title)
    for col in ("metric", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, label in ROUGE_ROWS:
        r = getattr(scores, key)
        table.add_row(label, f"{r.precision:.4f}", f"{r.recall:.4f}", f"{r.fmeasure:.4f}")
    table.add_row("overall (geo. mean R-1/2/L F1)", "", "", f"{scores.overall:.4f}")
    return table


@app.command("summarize", hidden=True)
def summarize_command(
    book: Annotated[Path, typer.Argument(metavar="BOOK", help="The book: .epub, .pdf, .txt or .md.")],
    words: Words = 400,
    model: Model = None,
    segment_len: SegmentLen = 2048,
    update: Update = "delta",
    memory: Memory = "on",
    temperature: Temperature = 0.0,
    seed: Seed = None,
    device: Device = "auto",
    strategy: Strategy = "infini",
    adapter: Adapter = None,
    no_adapter: NoAdapter = False,
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
    from .batch import write_outputs
    from .pipeline import summarize
    from .scoring import read_text_file

    references = [read_text_file(r) for r in ref or ()]  # fail on a bad reference before the model runs
    cfg = build_config(
        words=words,
        model=model,
        segment_len=segment_len,
        update=update,
        memory=memory,
        temperature=temperature,
        seed=seed,
        device=device,
        strategy=strategy,
        adapter=adapter,
        no_adapter=no_adapter,
        password=password,
    )
    with ProgressView(segment_len, quiet) as view:
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


@app.command("read")
def read_command(
    book: Annotated[Path, typer.Argument(metavar="BOOK", help="The book: .epub, .pdf, .txt or .md.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print title, author, words, chapters as JSON.")
    ] = False,
    text: Annotated[bool, typer.Option("--text", help="Print the clean text the model would read.")] = False,
    password: Password = None,
) -> None:
    """Show what infsum reads from BOOK: title, author, chapters with word counts."""
    from .readers import load_book

    if json_out and text:
        raise typer.BadParameter("give --json or --text, not both")
    b = load_book(book, password=password)
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


@app.command("score")
def score_command(
    summary: Annotated[Path, typer.Argument(help="The summary file (text or Markdown).")],
    refs: Annotated[list[Path], typer.Argument(metavar="REF...", help="One or more reference summaries.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Score SUMMARY against references with ROUGE-1/2/L/Lsum (best over references)."""
    from .scoring import score_files

    scores = score_files(summary, refs)
    if json_out:
        typer.echo(json.dumps(scores.to_dict(), indent=2))
    else:
        Console().print(rouge_table(scores))


@app.command("batch")
def batch_command(
    directory: Annotated[Path, typer.Argument(help="Folder of books (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for summaries and results.jsonl.")],
    refs: Annotated[Path | None, typer.Option(help="Folder of references named by book stem.")] = None,
    words: Words = 400,
    model: Model = None,
    segment_len: SegmentLen = 2048,
    update: Update = "delta",
    memory: Memory = "on",
    temperature: Temperature = 0.0,
    seed: Seed = None,
    device: Device = "auto",
    strategy: Strategy = "infini",
    adapter: Adapter = None,
    no_adapter: NoAdapter = False,
    quiet: Quiet = False,
) -> None:
    """Summarize every book under DIRECTORY into OUT; a rerun resumes where the last one stopped."""
    from .batch import run_batch

    cfg = build_config(
        words=words,
        model=model,
        segment_len=segment_len,
        update=update,
        memory=memory,
        temperature=temperature,
        seed=seed,
        device=device,
        strategy=strategy,
        adapter=adapter,
        no_adapter=no_adapter,
    )
    with ProgressView(segment_len, quiet) as view:
        report = run_batch(directory, out, cfg, refs_dir=refs, progress=view)
    Console().print(batch_table(report))
    for o in report.failed:
        typer.secho(f"failed: {o.book}: {o.message}", fg="red", err=True)
    if report.failed:
        raise typer.Exit(1)


def batch_table(report) -> Table:
    """One row per book (ok, error, or earlier: done by an earlier run; F1 scores), then the mean of
    each metric with its 95% interval."""
    keys = [k for k, _ in ROUGE_ROWS] + ["overall"]
    title = f"{len(report.outcomes)} books, {len(report.failed)} failed: ROUGE F1 (CI: bootstrap 95%)"
    table = Table(title=title)
    table.add_column("book", overflow="fold")
    table.add_column("status")
    for label in ("R-1", "R-2", "R-L", "R-Lsum"):
        table.add_column(label, justify="right")
    table.add_column("overall", justify="right")
    for o in report.outcomes:
        status = "earlier" if o.skipped else o.status
        cells = (
            [
                f"{getattr(o.rouge, k).fmeasure:.4f}" if k != "overall" else f"{o.rouge.overall:.4f}"
                for k in keys
            ]
            if o.rouge
            else [""] * len(keys)
        )
        table.add_row(plain(o.book), status, *cells)
    means = report.means
    if means:
        table.add_section()
        table.add_row("mean", "", *[f"{means[k].mean:.4f}" for k in keys])
        if means["overall"].ci:
            table.add_row("CI low", "", *[f"{means[k].ci[0]:.4f}" for k in keys])
            table.add_row("CI high", "", *[f"{means[k].ci[1]:.4f}" for k in keys])
    return table


# passkey and train live in their own module, which takes the option types defined above
from . import cli_train  # noqa: E402

cli_train.register(app)


def main() -> None:
    """Entry point of the ``infsum`` console script."""
    app()
