"""Rendering with rich: progress bars, ROUGE and batch tables, and text from books made safe to print."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

ROUGE_ROWS = (
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("rougeLsum", "ROUGE-Lsum"),
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
        elif step.stage == "notes":
            self._show("notes", "writing chapter notes", step.done, step.total)
        elif step.stage == "answer":
            self._show("answer", "answering", step.done, step.total)
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


def document(result, fmt: str) -> str:
    """A ``SummaryResult`` or ``AskResult`` as stdout gets it: ``md`` (the Markdown file's text),
    ``json`` (the JSON file's) or ``txt`` (the summary, or the answers, alone)."""
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)
    return result.text() if fmt == "txt" else result.markdown()


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


def coverage_table(rows, book) -> Table:
    """Where texts come from in ``book`` (a path): one row per ``(label, path, Coverage, names)``
    with the text's sentences, the matched ones in each tenth of the book (counts, first tenth
    first), the unmatched ones and the count of names the book never mentions; the names in the
    caption."""
    table = Table(title=plain(f"Where the sentences come from in {book.name}"))
    table.add_column("text", overflow="fold")
    table.add_column("sent.", justify="right")
    table.add_column("matched, per tenth of the book", no_wrap=True)
    table.add_column("unmatched", justify="right")
    table.add_column("invented", justify="right")
    invented = []
    for label, path, cov, names in rows:
        table.add_row(
            plain(f"{label}: {path.name}"),
            str(len(cov.sentences)),
            " ".join(f"{c:>2}" for c in cov.histogram),
            str(cov.unmatched),
            str(len(names)),
        )
        if names:
            invented.append(f"{label}: {', '.join(names)}")
    if invented:
        table.caption = plain("invented names (never in the book): " + "; ".join(invented))
    return table
