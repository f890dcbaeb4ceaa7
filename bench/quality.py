"""Summary quality benchmark: run summarization strategies over (book, references) pairs and score them.

Usage (from the repository root):

    python -m bench.quality --data squality-dev --strategies lead,textrank --run-dir runs/sq
    python -m bench.quality --data books --strategies truncate-tail --limit 3 --run-dir runs/books

Every (strategy, item) result is one JSON file under ``RUN_DIR/items/STRATEGY/ITEM.json``, written
atomically, so an interrupted run resumes where it stopped (done items are skipped). At the end the
run directory gets ``results.jsonl`` (every row), ``table.json`` and ``table.md``: per strategy the
number of items, mean ROUGE-1/2/L/Lsum F1 and Overall (geometric mean of R-1, R-2, R-L per item)
in percent with a bootstrap 95% interval, mean seconds and mean peak RSS per item. ``--plot`` draws
Overall by strategy with its interval (needs matplotlib).

Scoring is ``infsum.scoring``: rouge-score with the Porter stemmer, ROUGE-Lsum over one sentence per
line, the best reference per metric. Summary length defaults to the reference's length in words
(the mean over references when there are several).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from infsum.readers import Book, load_book
from infsum.scoring import METRICS, Rouge, RougeScores, score, summarize_scores

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"squality-dev": SHARED_DATA / "squality" / "dev", "books": SHARED_DATA / "books"}
INFINI_VARIANTS = ("infini", "infini-memory-off", "infini-untrained")
COLUMNS = (*METRICS, "overall")


@dataclass(frozen=True)
class Item:
    """One book (or story) and its reference summaries."""

    id: str
    path: Path
    references: tuple[str, ...]

    @property
    def ref_words(self) -> int:
        """The references' mean length in words, rounded."""
        return round(sum(len(r.split()) for r in self.references) / len(self.references))


# ---------------------------------------------------------------- data


def load_items(data: str, *, limit: int | None = None) -> list[Item]:
    """Items of a data set: ``squality-dev``, ``books`` or a directory in either layout:
    ``NAME.txt`` with ``NAME.ref1.txt``... (SQuALITY) or ``NAME/text.txt`` with ``NAME/summary.txt``."""
    root = DATASETS.get(data, Path(data))
    if not root.is_dir():
        sys.exit(f"{root}: data directory not found; give squality-dev, books or a directory")
    items = []
    for sub in sorted(p for p in root.iterdir() if (p / "text.txt").is_file()):
        items.append(Item(sub.name, sub / "text.txt", (_read(sub / "summary.txt"),)))
    for text in sorted(p for p in root.glob("*.txt") if ".ref" not in p.name):
        refs = tuple(_read(r) for r in sorted(root.glob(f"{text.stem}.ref*.txt")))
        if refs:
            items.append(Item(text.stem, text, refs))
    if not items:
        sys.exit(f"{root}: no items found (NAME.txt + NAME.ref1.txt, or NAME/text.txt + NAME/summary.txt)")
    return items[:limit] if limit else items


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8-sig", errors="replace")


# ---------------------------------------------------------------- running


class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs, sampled every 20 ms."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._proc = psutil.Process()
        self._stop = threading.Event()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        """The peak in MiB."""
        return self.peak / 2**20


class Runner:
    """Produces summaries for each strategy; the model is loaded once, on first need."""

    def __init__(self, model: str | None, device: str) -> None:
        self.model = model
        self.device = device
        self._loaded = None

    def loaded(self):
        """The model (None = infsum's default), loaded on first use."""
        if self._loaded is None:
            from infsum.models import load_model

            self._loaded = load_model(self.model, device=self.device)
        return self._loaded

    def summarize(self, strategy: str, book: Book, words: int) -> str:
        """The summary of ``book`` in about ``words`` words with ``strategy``."""
        if strategy in INFINI_VARIANTS:
            return self._infini(strategy, book, words)
        from infsum.config import GenerationConfig
        from infsum.strategies import MODEL_STRATEGIES, run_strategy

        loaded = self.loaded() if strategy in MODEL_STRATEGIES else None
        return run_strategy(strategy, book, words=words, loaded=loaded, gen=GenerationConfig())

    def _infini(self, strategy: str, book: Book, words: int) -> str:
        from infsum.config import SummarizeConfig
        from infsum.pipeline import summarize

        cfg = SummarizeConfig(model=self.model, device=self.device, words=words)
        if strategy == "infini-memory-off":
            cfg = replace(cfg, memory=replace(cfg.memory, enabled=False))
        elif strategy == "infini-untrained":
            cfg = replace(cfg, adapter=None)
        return summarize(book, cfg, model=self.loaded()).summary


def item_path(run_dir: Path, strategy: str, item: Item) -> Path:
    """Where the result of one (strategy, item) pair is stored."""
    return run_dir / "items" / strategy / f"{item.id}.json"


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_one(runner: Runner, strategy: str, item: Item, words: int | None) -> dict:
    """Summarize and score one item with one strategy; the row stored in the run directory."""
    target = words or item.ref_words
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        book = load_book(item.path)
        summary = runner.summarize(strategy, book, target)
        seconds = time.perf_counter() - t0
    scores = score(summary, item.references)
    return {
        "strategy": strategy,
        "item": item.id,
        "words_target": target,
        "summary_words": len(summary.split()),
        "book_words": book.words,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(rss.mb, 1),
        "scores": scores.to_dict(),
        "summary": summary,
    }


def run(
    run_dir: Path,
    strategies: Sequence[str],
    items: Sequence[Item],
    *,
    words: int | None,
    runner: Runner,
    compute: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every (strategy, item) pair not yet stored in ``run_dir`` (none without ``compute``);
    return all stored rows."""
    rows = []
    for strategy in strategies:
        for item in items:
            path = item_path(run_dir, strategy, item)
            if path.is_file():
                row = json.loads(path.read_text(encoding="utf-8"))
                log(f"{strategy:>18} {item.id:<32} done before")
            elif not compute:
                continue
            else:
                row = run_one(runner, strategy, item, words)
                write_json_atomic(path, row)
                overall = 100 * row["scores"]["overall"]
                log(f"{strategy:>18} {item.id:<32} Overall {overall:5.1f}  {row['seconds']:7.1f} s")
            rows.append(row)
    return rows


# ---------------------------------------------------------------- tables


def rouge_scores(d: dict) -> RougeScores:
    """Rebuild ``RougeScores`` from its ``to_dict()`` form."""
    return RougeScores(**{m: Rouge(**d[m]) for m in METRICS})


def table(rows: Sequence[dict]) -> list[dict]:
    """Per strategy (in first-seen order): n, mean F1 of each metric and Overall in percent with
    a bootstrap 95% interval (from 5 items up), mean seconds and mean peak RSS per item."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        stats = summarize_scores([rouge_scores(r["scores"]) for r in mine])
        entry: dict = {"strategy": strategy, "n": len(mine)}
        for name in COLUMNS:
            entry[name] = round(100 * stats[name].mean, 2)
            ci = stats[name].ci
            entry[f"{name}_ci"] = [round(100 * ci[0], 2), round(100 * ci[1], 2)] if ci else None
        entry["seconds"] = round(sum(r["seconds"] for r in mine) / len(mine), 2)
        entry["peak_rss_mb"] = round(sum(r["peak_rss_mb"] for r in mine) / len(mine), 1)
        out.append(entry)
    return out


def table_markdown(entries: Sequence[dict]) -> str:
    """The table as Markdown (F1 in percent, one decimal)."""
    lines = [
        "| strategy | n | R-1 | R-2 | R-L | R-Lsum | Overall [95% CI] | s/item | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        ci = e["overall_ci"]
        overall = f"{e['overall']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        lines.append(
            f"| {e['strategy']} | {e['n']} | {e['rouge1']:.1f} | {e['rouge2']:.1f} | {e['rougeL']:.1f} "
            f"| {e['rougeLsum']:.1f} | {overall} | {e['seconds']:.2f} | {e['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(entries: Sequence[dict], path: Path, title: str) -> None:
    """Bar chart of Overall by strategy with 95% interval error bars, saved as PNG."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{e['strategy']}\n(n={e['n']}{'' if e['overall_ci'] else ', no CI'})" for e in entries]
    means = [e["overall"] for e in entries]
    colors = ["#4c72b0" if e["overall_ci"] else "#a6b8d8" for e in entries]  # pale: too few items
    fig, ax = plt.subplots(figsize=(1.6 * len(entries) + 2, 4))
    ax.bar(names, means, color=colors)
    for x, e in enumerate(entries):
        if e["overall_ci"]:
            lo, hi = e["overall_ci"]
            ax.errorbar(
                x, e["overall"], yerr=[[e["overall"] - lo], [hi - e["overall"]]], color="k", capsize=5
            )
    ax.set_ylabel("Overall ROUGE F1 (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(run_dir: Path, rows: Sequence[dict]) -> list[dict]:
    """Write ``results.jsonl``, ``table.json`` and ``table.md`` into ``run_dir``; return the table."""
    entries = table(rows)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (run_dir / "results.jsonl").write_text(lines, encoding="utf-8")
    write_json_atomic(run_dir / "table.json", entries)
    (run_dir / "table.md").write_text(table_markdown(entries), encoding="utf-8")
    return entries


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="squality-dev", help="squality-dev, books or a directory")
    p.add_argument("--strategies", default="lead,textrank", help="comma-separated strategy names")
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--words", default="ref", help="summary length: 'ref' (the reference's) or N")
    p.add_argument("--run-dir", type=Path, required=True, help="resumable output directory")
    p.add_argument("--model", default=None, help="model name, directory or .gguf (default: infsum's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--report-only", action="store_true", help="tabulate stored results, run nothing")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of Overall by strategy here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    from infsum.strategies import STRATEGIES

    args = parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in (*STRATEGIES, *INFINI_VARIANTS)]
    if unknown:
        sys.exit(f"unknown strategies {unknown}; use: {', '.join((*STRATEGIES, *INFINI_VARIANTS))}")
    words = None if args.words == "ref" else int(args.words)
    items = load_items(args.data, limit=args.limit)
    runner = Runner(args.model, args.device)
    rows = run(args.run_dir, strategies, items, words=words, runner=runner, compute=not args.report_only)
    if not rows:
        sys.exit(f"{args.run_dir}: no results stored for these strategies and items")
    entries = write_outputs(args.run_dir, rows)
    print(table_markdown(entries), end="")
    if args.plot:
        plot(entries, args.plot, f"Overall ROUGE on {args.data}, 95% bootstrap intervals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
