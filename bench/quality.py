"""Summary quality benchmark: run summarization strategies over (book, references) pairs and score them.

Usage (from the repository root):

    python -m bench.quality --data squality-dev --strategies lead,textrank --run-dir runs/sq
    python -m bench.quality --data books --strategies truncate-tail --limit 3 --run-dir runs/books
    python -m bench.quality --data books --strategies infini,hierarchical --device cuda \
        --dtype float32 --workers 8 --items the-time-machine,siddhartha --run-dir runs/books

Work goes item by item (every strategy on the first item, then the second...), so an interrupted
run leaves complete rows. Every (strategy, item) result is one JSON file under
``RUN_DIR/items/STRATEGY/ITEM.json``, written atomically, so a rerun resumes where it stopped (done
pairs are skipped). ``--workers N`` runs N processes that each load the model once and take the next
pending pair (useful on a GPU, which one process of a small model leaves mostly idle). A pair that
fails is reported and skipped; the exit code is then 1. At the end the run directory gets
``results.jsonl`` (every row), ``table.json`` and ``table.md``: per strategy the number of items,
mean ROUGE-1/2/L/Lsum F1 and Overall (geometric mean of R-1, R-2, R-L per item) in percent with a
bootstrap 95% interval, mean seconds, mean peak RSS and (on CUDA) mean peak GPU memory per item,
the mean count of invented names per summary (names the book never mentions, ``infsum.names``) and
where the summaries come from (``infsum.coverage``): the mean share of a summary's sentences
matched in each tenth of its book, and in the last tenth alone. Item files stored before a row had
the names or the coverage are completed from their stored summary and the book when tabulated.
Seconds are wall time per pair, so with several workers they include waiting for the shared device.
``--plot`` draws Overall by strategy with its interval (needs matplotlib). ``--versus S`` adds a
paired comparison with strategy S (``versus.json``): per strategy, over the items both have, the
mean per-item difference in Overall with a bootstrap interval, and the items won and lost.
``--versus-run DIR`` compares every strategy with the same strategy stored in another run
directory (another dtype, model or revision), item by item, the same way (``versus-run.json``).

Scoring is ``infsum.scoring``: rouge-score with the Porter stemmer, ROUGE-Lsum over one sentence per
line, the best reference per metric. Summary length defaults to the reference's length in words
(the mean over references when there are several).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from infsum.batch import write_atomic
from infsum.coverage import BINS, PassageIndex
from infsum.names import unsupported_names
from infsum.pipeline import SummaryResult
from infsum.readers import Book, load_book
from infsum.scoring import METRICS, Rouge, RougeScores, bootstrap_ci, score, summarize_scores
from infsum.tokenizer import first_line

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"squality-dev": SHARED_DATA / "squality" / "dev", "books": SHARED_DATA / "books"}
# the infini strategy with its memory off, without its adapter, and written whole after the book
# (``--part-words 0``): the controls it is measured against
INFINI_CONTROLS = ("infini-memory-off", "infini-untrained", "infini-whole")
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


def load_items(data: str, *, limit: int | None = None, only: Sequence[str] = ()) -> list[Item]:
    """Items of a data set: ``squality-dev``, ``books`` or a directory in either layout:
    ``NAME.txt`` with ``NAME.ref1.txt``... (SQuALITY) or ``NAME/text.txt`` with ``NAME/summary.txt``.
    ``only`` picks items by id, in its order; ``limit`` then keeps the first N."""
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
    if only:
        by_id = {i.id: i for i in items}
        missing = [name for name in only if name not in by_id]
        if missing:
            sys.exit(f"{root}: no items {missing}; ids are: {', '.join(by_id)}")
        items = [by_id[name] for name in only]
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


DTYPES = ("default", "auto", "float32", "bfloat16", "float16")  # default: infsum's, as load_model(dtype=None)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and where: name (None = infsum's default), device, dtype (``default``:
    infsum's; ``auto``: as ``--dtype auto``); and the exact-token store it reads with (0 = none)."""

    name: str | None = None
    device: str = "auto"
    dtype: str = "default"
    exact_tokens: int = 0


class Runner:
    """Produces summaries for each strategy; the model is loaded once, on first need."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._loaded = None

    def loaded(self):
        """The model, loaded on first use."""
        if self._loaded is None:
            import torch

            from infsum.models import load_model

            named = {"default": None, "auto": "auto"}
            dtype = named[self.spec.dtype] if self.spec.dtype in named else getattr(torch, self.spec.dtype)
            self._loaded = load_model(self.spec.name, device=self.spec.device, dtype=dtype)
        return self._loaded

    def uses_model(self, strategy: str) -> bool:
        """Whether ``strategy`` runs the model (lead and TextRank do not)."""
        from infsum.strategies import get_strategy

        return strategy in INFINI_CONTROLS or get_strategy(strategy).needs_model

    def where(self, strategy: str) -> dict:
        """Where ``strategy`` runs: device (with the GPU's name) and dtype; extractive ones on the CPU."""
        if not self.uses_model(strategy):
            return {"device": "cpu", "dtype": None}
        loaded = self.loaded()
        device = str(loaded.device)
        if loaded.device.type == "cuda":
            import torch

            device += f" ({torch.cuda.get_device_name(loaded.device)})"
        dtype, decode = str(loaded.model.dtype).removeprefix("torch."), loaded.decode_weights
        return {
            "device": device,
            "dtype": dtype,
            "decode_weights": decode,
            "exact_tokens": self.spec.exact_tokens,
        }

    def summarize(self, strategy: str, book: Book, words: int) -> SummaryResult:
        """The summary of ``book`` in about ``words`` words with ``strategy``, through the same entry
        point as ``infsum BOOK --strategy`` (so every model strategy's output is trimmed alike)."""
        from infsum.config import SummarizeConfig
        from infsum.pipeline import summarize

        cfg = SummarizeConfig(model=self.spec.name, device=self.spec.device, words=words, strategy=strategy)
        cfg = replace(cfg, memory=replace(cfg.memory, exact_tokens=self.spec.exact_tokens))
        if strategy == "infini-memory-off":
            cfg = replace(cfg, strategy="infini", memory=replace(cfg.memory, enabled=False))
        elif strategy == "infini-untrained":
            cfg = replace(cfg, strategy="infini", adapter=None)
        elif strategy == "infini-whole":
            cfg = replace(cfg, strategy="infini", part_words=0)
        return summarize(book, cfg, model=self.loaded() if self.uses_model(strategy) else None)


def item_path(run_dir: Path, strategy: str, item: Item) -> Path:
    """Where the result of one (strategy, item) pair is stored."""
    return run_dir / "items" / strategy / f"{item.id}.json"


def write_json_atomic(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (infsum's batch writer: temporary file, rename)."""
    write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _cuda_device(runner: Runner, strategy: str):
    """The CUDA device ``strategy`` runs on, or None (extractive, CPU or MPS)."""
    if not runner.uses_model(strategy):
        return None
    device = runner.loaded().device
    return device if device.type == "cuda" else None


def run_one(runner: Runner, strategy: str, item: Item, words: int | None, workers: int = 1) -> dict:
    """Summarize and score one item with one strategy; the row stored in the run directory."""
    target = words or item.ref_words
    import torch

    where = runner.where(strategy)  # loads the model before the clock starts
    cuda = _cuda_device(runner, strategy)
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        book = load_book(item.path)
        result = runner.summarize(strategy, book, target)
        seconds = time.perf_counter() - t0
    peak_gpu = None if cuda is None else round(torch.cuda.max_memory_allocated(cuda) / 2**20, 1)
    return result_row(
        strategy,
        item,
        book,
        result,
        target,
        seconds=seconds,
        peak_rss_mb=rss.mb,
        peak_gpu_mb=peak_gpu,
        where=where,
        workers=workers,
    )


def result_row(
    strategy: str,
    item: Item,
    book: Book,
    result: SummaryResult,
    words_target: int,
    *,
    seconds: float,
    peak_rss_mb: float,
    peak_gpu_mb: float | None,
    where: dict,
    workers: int = 1,
) -> dict:
    """The stored row of one (strategy, item) pair: its summary scored against the item's
    references, its invented names and coverage, and what it cost (``where``: device and dtype)."""
    summary = result.summary
    scores = score(summary, item.references)
    return {
        "strategy": strategy,
        "item": item.id,
        "words_target": words_target,
        "summary_words": len(summary.split()),
        "book_words": book.words,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_gpu_mb": peak_gpu_mb,
        **where,
        "workers": workers,
        "scores": scores.to_dict(),
        "unsupported_names": list(result.unsupported_names),  # names the book never mentions
        "coverage": PassageIndex(book.text).coverage(summary).to_dict(),  # where its sentences come from
        "summary": summary,
    }


def _attempt(
    runner: Runner, run_dir: Path, strategy: str, item: Item, words: int | None, workers: int
) -> tuple[str, bool]:
    """Run, store and describe one pair: (log line, whether it succeeded); a failure is not raised."""
    try:
        row = run_one(runner, strategy, item, words, workers)
    except Exception as e:  # one bad pair must not cost the rest of a long run
        return f"{strategy:>18} {item.id:<32} FAILED: {type(e).__name__}: {first_line(e)}", False
    write_json_atomic(item_path(run_dir, strategy, item), row)
    overall = 100 * row["scores"]["overall"]
    return f"{strategy:>18} {item.id:<32} Overall {overall:5.1f}  {row['seconds']:7.1f} s", True


def next_task(todo, alive: Callable[[], bool], poll: float = 5.0):
    """The next pair from ``todo``; None at its end, or as soon as ``alive()`` is false (the parent
    was killed: nobody would collect the results, and its pairs would wait in the queue forever)."""
    while alive():
        try:
            return todo.get(timeout=poll)
        except queue.Empty:
            continue
    return None


def _worker(index: int, spec: ModelSpec, run_dir: Path, words: int | None, workers: int, todo, done) -> None:
    """Worker ``index``: take (strategy, item) pairs from ``todo`` until None, report each outcome to
    ``done``, then its index. It stops after its current pair if the parent process dies."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    runner = Runner(spec)
    parent = mp.parent_process()
    alive = parent.is_alive if parent is not None else lambda: True
    while (task := next_task(todo, alive)) is not None:
        done.put(_attempt(runner, run_dir, *task, words, workers))
    done.put(index)


def tasks(strategies: Sequence[str], items: Sequence[Item]) -> Iterator[tuple[str, Item]]:
    """(strategy, item) pairs, item by item: every strategy on an item before the next item."""
    for item in items:
        for strategy in strategies:
            yield strategy, item


def run(
    run_dir: Path,
    strategies: Sequence[str],
    items: Sequence[Item],
    *,
    words: int | None,
    spec: ModelSpec,
    workers: int = 1,
    compute: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], int]:
    """Run every (strategy, item) pair not yet stored in ``run_dir`` (none without ``compute``) in
    ``workers`` processes (1: this one); return all stored rows and how many pairs failed."""
    pending = [t for t in tasks(strategies, items) if not item_path(run_dir, t[0], t[1]).is_file()]
    failed = 0

    def report(line: str, ok: bool) -> None:
        nonlocal failed
        failed += not ok
        log(line)

    if compute and workers <= 1:
        runner = Runner(spec)
        for strategy, item in pending:
            report(*_attempt(runner, run_dir, strategy, item, words, 1))
    elif compute and pending:
        ctx = mp.get_context("spawn")  # CUDA cannot be shared with forked children
        todo, done = ctx.Queue(), ctx.Queue()
        for task in pending:
            todo.put(task)
        n = min(workers, len(pending))
        for _ in range(n):
            todo.put(None)
        procs = [
            ctx.Process(target=_worker, args=(k, spec, run_dir, words, workers, todo, done)) for k in range(n)
        ]
        for p in procs:
            p.start()
        finished: set[int] = set()
        while len(finished) < n:
            try:
                msg = done.get(timeout=2)
            except queue.Empty:  # a worker killed from outside (out of memory, a signal) sends nothing
                for k, p in enumerate(procs):
                    if k not in finished and p.exitcode not in (None, 0):
                        finished.add(k)
                        report(f"worker {k} FAILED: exit code {p.exitcode}; its pair was not stored", False)
                continue
            if isinstance(msg, int):
                finished.add(msg)
            else:
                report(*msg)
        for p in procs:
            p.join()
    rows, books = [], Books()
    for strategy, item in tasks(strategies, items):
        path = item_path(run_dir, strategy, item)
        if path.is_file():
            rows.append(complete(json.loads(path.read_text(encoding="utf-8")), item, books))
    return rows, failed


class Books:
    """Each item's book text and passage index, read on first need (for rows stored without the
    invented names or the coverage)."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[str, PassageIndex]] = {}

    def get(self, item: Item) -> tuple[str, PassageIndex]:
        """``(book text, PassageIndex)`` of ``item``."""
        if item.id not in self._read:
            text = load_book(item.path).text
            self._read[item.id] = text, PassageIndex(text)
        return self._read[item.id]


def complete(row: dict, item: Item, books: Books) -> dict:
    """``row`` with ``unsupported_names`` and ``coverage`` computed from its stored summary and the
    item's book where an older run did not store them (the item file itself is left as it is)."""
    if "unsupported_names" in row and "coverage" in row:
        return row
    text, index = books.get(item)
    return {
        "unsupported_names": unsupported_names(row["summary"], text),
        "coverage": index.coverage(row["summary"]).to_dict(),
        **row,
    }


# ---------------------------------------------------------------- tables


def rouge_scores(d: dict) -> RougeScores:
    """Rebuild ``RougeScores`` from its ``to_dict()`` form."""
    return RougeScores(**{m: Rouge(**d[m]) for m in METRICS})


def table(rows: Sequence[dict]) -> list[dict]:
    """Per strategy (in first-seen order): n, mean F1 of each metric and Overall in percent with
    a bootstrap 95% interval (from 5 items up), mean seconds, peak RSS (None where no row measured
    it) and peak GPU memory (None off CUDA) per item, the devices the rows were computed on, the
    mean count of invented names per summary (``invented_names``), and where the summaries come
    from in the books: ``coverage``, the mean share (percent) of a summary's sentences matched in
    each tenth of the book (unmatched ones in no tenth), and ``last_tenth``, its last value (None
    for rows that have neither)."""
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
        rss = [r["peak_rss_mb"] for r in mine if r.get("peak_rss_mb") is not None]  # unmeasured: None
        entry["peak_rss_mb"] = round(sum(rss) / len(rss), 1) if rss else None
        gpu = [r["peak_gpu_mb"] for r in mine if r.get("peak_gpu_mb") is not None]
        entry["peak_gpu_mb"] = round(sum(gpu) / len(gpu), 1) if gpu else None
        entry["devices"] = sorted({r.get("device") or "unrecorded" for r in mine})
        named = [len(r["unsupported_names"]) for r in mine if "unsupported_names" in r]
        entry["invented_names"] = round(sum(named) / len(named), 2) if named else None
        shares = [r["coverage"]["shares"] for r in mine if "coverage" in r]
        tenths = (
            [round(100 * sum(s[b] for s in shares) / len(shares), 1) for b in range(BINS)] if shares else None
        )
        entry["coverage"], entry["last_tenth"] = tenths, tenths[-1] if tenths else None
        out.append(entry)
    return out


def table_markdown(entries: Sequence[dict]) -> str:
    """The table as Markdown (F1 in percent, one decimal)."""
    lines = [
        "| strategy | n | R-1 | R-2 | R-L | R-Lsum | Overall [95% CI] | invented names | last 10% "
        "| sentences by tenth % | s/item | peak RSS MiB | peak GPU MiB | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        ci = e["overall_ci"]
        overall = f"{e['overall']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
        gpu = "-" if e.get("peak_gpu_mb") is None else f"{e['peak_gpu_mb']:.0f}"
        rss = "-" if e.get("peak_rss_mb") is None else f"{e['peak_rss_mb']:.0f}"
        names = "-" if e.get("invented_names") is None else f"{e['invented_names']:.2f}"
        cov = e.get("coverage")
        last, tenths = ("-", "-") if cov is None else (f"{cov[-1]:.1f}", " ".join(f"{c:.0f}" for c in cov))
        lines.append(
            f"| {e['strategy']} | {e['n']} | {e['rouge1']:.1f} | {e['rouge2']:.1f} | {e['rougeL']:.1f} "
            f"| {e['rougeLsum']:.1f} | {overall} | {names} | {last} | {tenths} | {e['seconds']:.2f} "
            f"| {rss} "
            f"| {gpu} | {', '.join(e.get('devices', ['unrecorded']))} |"
        )
    return "\n".join(lines) + "\n"


def versus(rows: Sequence[dict], baseline: str) -> list[dict]:
    """Paired comparison with ``baseline``: per other strategy, over the items both have, the mean
    per-item difference in Overall (percent points) with a bootstrap 95% interval (from 5 items up)
    and how many items it wins and loses."""
    overall = {(r["strategy"], r["item"]): rouge_scores(r["scores"]).overall for r in rows}
    base = {item: v for (strategy, item), v in overall.items() if strategy == baseline}
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != baseline):
        diffs = [
            100 * (v - base[item]) for (name, item), v in overall.items() if name == strategy and item in base
        ]
        if not diffs:
            continue
        ci = bootstrap_ci(diffs) if len(diffs) >= 5 else None
        out.append(
            {
                "strategy": strategy,
                "n": len(diffs),
                "delta": round(sum(diffs) / len(diffs), 2),
                "delta_ci": [round(ci[0], 2), round(ci[1], 2)] if ci else None,
                "wins": sum(d > 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
            }
        )
    return out


def versus_run(rows: Sequence[dict], other: Sequence[dict], label: str) -> list[dict]:
    """Paired comparison of every strategy in ``rows`` with the same strategy in ``other`` (the rows
    of another run directory, called ``label``), as ``versus`` computes it."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        pair = [r for r in rows if r["strategy"] == strategy]
        pair += [{**r, "strategy": label} for r in other if r["strategy"] == strategy]
        out += versus(pair, label)
    return out


def versus_markdown(entries: Sequence[dict], baseline: str) -> str:
    """The paired comparison as Markdown."""
    lines = [
        f"| strategy | n | Overall minus {baseline} [95% CI] | wins | losses |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        ci = e["delta_ci"]
        delta = f"{e['delta']:+.1f}" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
        lines.append(f"| {e['strategy']} | {e['n']} | {delta} | {e['wins']} | {e['losses']} |")
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
    p.add_argument("--items", default="", help="comma-separated item ids to run, in this order")
    p.add_argument("--words", default="ref", help="summary length: 'ref' (the reference's) or N")
    p.add_argument("--run-dir", type=Path, required=True, help="resumable output directory")
    p.add_argument("--model", default=None, help="model name, directory or .gguf (default: infsum's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument(
        "--dtype",
        default="default",
        choices=DTYPES,
        help="model dtype (default: infsum's, which is auto: bfloat16 on CUDA and on CPUs with native "
        "bfloat16, else float32)",
    )
    p.add_argument(
        "--exact-tokens", type=int, default=0, help="the exact-token store the model strategies read with"
    )
    p.add_argument("--workers", type=int, default=1, help="processes running pairs in parallel")
    p.add_argument("--report-only", action="store_true", help="tabulate stored results, run nothing")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG of Overall by strategy here")
    p.add_argument("--versus", default=None, help="also compare every strategy with this one, item by item")
    p.add_argument(
        "--versus-run",
        type=Path,
        default=None,
        help="also compare every strategy with the same strategy stored in this run directory",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    from infsum.strategies import STRATEGIES

    args = parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in (*STRATEGIES, *INFINI_CONTROLS)]
    if unknown:
        sys.exit(f"unknown strategies {unknown}; use: {', '.join((*STRATEGIES, *INFINI_CONTROLS))}")
    if args.versus and args.versus not in strategies:
        sys.exit(f"--versus {args.versus}: not among --strategies {args.strategies}")
    words = None if args.words == "ref" else int(args.words)
    only = [s.strip() for s in args.items.split(",") if s.strip()]
    items = load_items(args.data, limit=args.limit, only=only)
    spec = ModelSpec(args.model, args.device, args.dtype, args.exact_tokens)
    rows, failed = run(
        args.run_dir,
        strategies,
        items,
        words=words,
        spec=spec,
        workers=args.workers,
        compute=not args.report_only,
    )
    if not rows:
        sys.exit(f"{args.run_dir}: no results stored for these strategies and items")
    entries = write_outputs(args.run_dir, rows)
    print(table_markdown(entries), end="")
    if args.plot:
        plot(entries, args.plot, f"Overall ROUGE on {args.data}, 95% bootstrap intervals")
    if args.versus:
        paired = versus(rows, args.versus)
        write_json_atomic(args.run_dir / "versus.json", {"baseline": args.versus, "rows": paired})
        print("\n" + versus_markdown(paired, args.versus), end="")
    if args.versus_run:
        other, _ = run(args.versus_run, strategies, items, words=words, spec=spec, compute=False)
        label = str(args.versus_run)
        paired = versus_run(rows, other, label)
        write_json_atomic(args.run_dir / "versus-run.json", {"baseline": label, "rows": paired})
        print("\n" + versus_markdown(paired, f"the same strategy in {label}"), end="")
    if failed:
        print(f"{failed} pair(s) failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
