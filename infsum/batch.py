"""Resumable directory runs: summarize every book under a folder, writing each result as it finishes.

Layout: ``OUT/<relative folder>/<stem>.summary.md`` and ``.summary.json`` per book, plus one JSON
line per attempt in ``OUT/results.jsonl``. A rerun skips books whose last record is ``ok`` and
whose files exist, and retries the others, so an interrupted batch loses and duplicates nothing.
A damaged line in ``results.jsonl`` is moved to ``results.jsonl.bad`` (with a warning naming its line
number) and its book is redone. One batch at a time owns an output folder: ``OUT/.infsum-batch.lock``
is created atomically with the owner's process id, removed on exit, and taken over when that process
no longer runs (a crash). A failed write (disk full, permissions) stops the batch with
``OutputError``: nothing half-written is left, and a rerun after the fix resumes.

Several processes (``accelerate launch -m infsum batch ...``, torchrun, or any launcher that sets
``RANK`` and ``WORLD_SIZE``) split the books by index: process r of w takes the books whose index in
the sorted list is r modulo w. Each holds its own lock (``.infsum-batch.rank<r>-of-<w>.lock``) and
appends to its own part (``results.rank<r>-of-<w>.jsonl``), so a rerun resumes every process; a book
done by any earlier run (in ``results.jsonl`` or a part) is skipped. The process that finds, when it
is done, a record of every book in the parts merges them into ``results.jsonl``: each book once, its
latest record, in book order (the parts are then removed). No process waits for another, and no
collective call is made: a process killed mid-way leaves its part, and the next run merges.

With ``parallel`` above 1 (``--parallel K``, the infini strategy), the books still to do stream side
by side, K rows of one batch (``Summarizer.read_together``): each book's summary is written, and its
record appended, as soon as its row has read it, while the other rows wait; a finished row takes the
next book. Resuming works as above. A failure while the batch streams stops the run (every row
shares it); a rerun resumes from the books recorded so far.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .config import SummarizeConfig
from .errors import BookNotFoundError, ConfigError, InfsumError, OutputError
from .pipeline import Streamed, Summarizer, SummaryResult, rouge_from_dict
from .progress import Progress, Step
from .readers import SUFFIXES, Book, load_book
from .scoring import MetricSummary, RougeScores, read_text_file, summarize_scores

RESULTS = "results.jsonl"
LOCK = ".infsum-batch.lock"
log = logging.getLogger("infsum")
_REFERENCE = re.compile(r"\.ref\d*\.txt$", re.IGNORECASE)

_PART = "results.rank{rank}-of-{world}.jsonl"  # one process's results in a sharded batch

# summarizer(book path, reference texts, progress=...) -> SummaryResult
BookSummarizer = Callable[..., SummaryResult]


@dataclass(frozen=True)
class BookOutcome:
    """What happened to one book in this run (``skipped``: done by an earlier run)."""

    book: str  # path relative to the batch folder, with / separators
    status: str  # "ok" or "error"
    message: str | None = None
    rouge: RougeScores | None = None
    skipped: bool = False


@dataclass(frozen=True)
class BatchReport:
    """Every book's outcome, in order, and the mean of each ROUGE metric over the scored books."""

    outcomes: tuple[BookOutcome, ...]

    @property
    def failed(self) -> list[BookOutcome]:
        """The books that failed in this run."""
        return [o for o in self.outcomes if o.status != "ok"]

    @property
    def means(self) -> dict[str, MetricSummary] | None:
        """Mean F1 per metric (with a bootstrap 95% CI from five books up); None when none is scored."""
        scored = [o.rouge for o in self.outcomes if o.rouge is not None]
        return summarize_scores(scored) if scored else None


@dataclass(frozen=True)
class Shard:
    """This process's share of a batch: the books whose index is ``rank`` modulo ``world``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the process's index on its machine (its GPU)

    @classmethod
    def from_env(cls) -> Shard:
        """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as accelerate launch and torchrun set them;
        one process where they are unset. Raises ConfigError for values that make no shard."""
        try:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ConfigError(
                "RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers: unset them or launch with accelerate"
            ) from None
        if not 0 <= rank < world:
            raise ConfigError(f"RANK {rank} is not below WORLD_SIZE {world}: unset them or fix the launcher")
        return cls(rank, world, local)

    @property
    def lock_name(self) -> str:
        """The lock file this process holds in the output folder."""
        return LOCK if self.world == 1 else f".infsum-batch.rank{self.rank}-of-{self.world}.lock"

    @property
    def results_name(self) -> str:
        """The results file this process appends to."""
        return RESULTS if self.world == 1 else _PART.format(rank=self.rank, world=self.world)

    def take(self, books: Sequence[Path]) -> list[tuple[int, Path]]:
        """(index, book) of this process's books."""
        return [(i, b) for i, b in enumerate(books) if i % self.world == self.rank]


def find_books(directory: Path, out: Path) -> list[Path]:
    """Books (EPUB, PDF, txt, md) under ``directory``, sorted, without reference files or ``out``."""
    out = out.resolve()
    books = []
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in SUFFIXES or _REFERENCE.search(p.name):
            continue
        rel = p.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or p.resolve().is_relative_to(out):
            continue
        books.append(p)
    return books


def find_references(book: Path, refs_dir: Path | None = None) -> list[Path]:
    """``<stem>.ref.txt`` and ``<stem>.ref<N>.txt`` beside the book, else in ``refs_dir`` (where
    ``<stem>.txt`` also counts)."""
    beside = re.compile(re.escape(book.stem) + r"\.ref\d*\.txt", re.IGNORECASE)
    found = sorted(p for p in book.parent.iterdir() if beside.fullmatch(p.name) and p.is_file())
    if found or refs_dir is None:
        return found
    named = re.compile(re.escape(book.stem) + r"(\.ref\d*)?\.txt", re.IGNORECASE)
    return sorted(p for p in refs_dir.iterdir() if named.fullmatch(p.name) and p.is_file() and p != book)


def output_paths(book: Path, directory: Path, out: Path, books: Sequence[Path]) -> tuple[Path, Path]:
    """``OUT/<relative folder>/<stem>.summary.md`` and ``.json``; the full file name replaces the
    stem when two books in one folder share a stem (``x.txt`` and ``x.epub``)."""
    clash = any(b != book and b.parent == book.parent and b.stem == book.stem for b in books)
    stem = book.name if clash else book.stem
    folder = out / book.parent.relative_to(directory)
    return folder / f"{stem}.summary.md", folder / f"{stem}.summary.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (or a rerun after
    a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # the folder may not even exist
            tmp.unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write it ({e.strerror or e}); free space, fix permissions or pick another -o"
        ) from e


def write_outputs(result: SummaryResult, md: Path, js: Path) -> None:
    """Write a result's JSON and Markdown files atomically."""
    write_atomic(js, json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    write_atomic(md, result.markdown())


def read_records(path: Path) -> list[dict]:
    """The complete, undamaged records of a results file, in order, without changing it ([] when
    it does not exist)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise OutputError(f"{path}: cannot read it ({e.strerror or e}); fix permissions, then rerun") from e
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    return [r for r in map(_parse, lines) if r is not None]


class ResultsLog:
    """``OUT/results.jsonl`` (or one process's part): one JSON line per attempt, appended with flush
    and fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: dict[str, dict] = {}  # book -> its latest record
        if path.is_file():
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]  # a kill mid-line leaves a partial last line
            if len(complete) != len(data):
                with open(path, "r+b") as f:
                    f.truncate(len(complete))
            good, bad = [], []
            for n, line in enumerate(complete.split(b"\n")[:-1], 1):
                record = _parse(line)
                if record is None and line.strip():
                    log.warning(
                        "%s: line %d is damaged; set aside in %s.bad, its book is redone", path, n, path.name
                    )
                    bad.append(line)
                elif record is not None:
                    good.append(line)
                    self.last[record["book"]] = record
            if bad:
                with open(path.with_name(path.name + ".bad"), "ab") as f:
                    f.write(b"".join(x + b"\n" for x in bad))
                write_atomic(path, b"".join(x + b"\n" for x in good).decode("utf-8"))

    def done(self, book: str, files: Sequence[Path]) -> bool:
        """Whether ``book`` was summarized by an earlier run and its files are still there."""
        return _done(self.last.get(book), files)

    def append(self, record: dict) -> None:
        """Append one record and make it durable before returning."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                start = f.tell()
                try:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    f.truncate(start)  # never leave a cut-off last line
                    raise
        except OSError as e:
            raise OutputError(
                f"{self.path}: cannot append ({e.strerror or e}); free space or fix permissions, then rerun"
            ) from e
        self.last[record["book"]] = record


def _parse(line: bytes) -> dict | None:
    """A results record, or None for a blank or damaged line."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("book"), str) and "status" in record
    return record if ok else None


class BatchLock:
    """``OUT/.infsum-batch.lock``: one batch per output folder (one process per shard of it, under
    the shard's lock name), recognisably stale after a crash."""

    def __init__(self, out: Path, name: str = LOCK) -> None:
        self.path = out / name

    def __enter__(self) -> BatchLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"{self.path.parent}: cannot create it ({e.strerror or e}); pick another -o"
            ) from e
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise OutputError(
                        f"{self.path.parent}: another infsum batch (process {owner}) is writing here; "
                        "wait for it or use another -o"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                raise OutputError(
                    f"{self.path}: cannot create the lock ({e.strerror or e}); pick another -o"
                ) from e
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise OutputError(f"{self.path}: another batch keeps taking the lock; use another -o")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def run_batch(
    directory: str | Path,
    out: str | Path,
    cfg: SummarizeConfig | None = None,
    *,
    refs_dir: str | Path | None = None,
    progress: Progress | None = None,
    summarizer: BookSummarizer | None = None,
    shard: Shard | None = None,
    parallel: int = 1,
) -> BatchReport:
    """Summarize every book under ``directory`` into ``out``, resuming an earlier run there.

    ``summarizer(path, references, progress=...)`` defaults to a ``Summarizer(cfg)`` that loads the
    model once. A book that fails is recorded with its message and the batch goes on. ``shard``
    (default: ``Shard.from_env()``) limits this process to its share of the books; the report holds
    this process's books only. ``parallel`` books stream side by side (a ``Summarizer`` only; see
    the module doc); ConfigError where the strategy cannot.
    """
    directory, out = Path(directory), Path(out)
    shard = shard or Shard.from_env()
    if not directory.is_dir():
        raise BookNotFoundError(f"{directory}: no such folder; give the folder that holds the books")
    cfg = cfg or SummarizeConfig()
    if shard.world > 1 and summarizer is None:
        cfg = replace(cfg, device=_shard_device(cfg.device, shard))
    summarizer = summarizer or Summarizer(cfg)
    if parallel != 1:
        if not isinstance(summarizer, Summarizer):
            raise ValueError("parallel reading needs infsum's Summarizer, not another summarizer")
        summarizer.read_together([], parallel)  # checks the strategy and options before any book
    report = progress or (lambda step: None)
    books = find_books(directory, out)
    if not books:
        raise BookNotFoundError(
            f"{directory}: no books found (looked for {', '.join(SUFFIXES)} files); check the folder"
        )
    outcomes: dict[int, BookOutcome] = {}  # by the book's place in this process's share
    mine = shard.take(books)
    with BatchLock(out, shard.lock_name):
        results = ResultsLog(out / shard.results_name)
        earlier = _latest(read_records(out / RESULTS)) if shard.world > 1 else {}
        todo: list[_Todo] = []
        for n, (_, book) in enumerate(mine):
            rel = book.relative_to(directory).as_posix()
            md, js = output_paths(book, directory, out, books)
            done = [r for r in (results.last.get(rel), earlier.get(rel)) if _done(r, (md, js))]
            if done:
                rouge = done[0].get("rouge")
                outcomes[n] = BookOutcome(rel, "ok", rouge=rouge and rouge_from_dict(rouge), skipped=True)
            else:
                todo.append(_Todo(n, book, rel, md, js))
        if parallel == 1:
            for t in todo:
                report(Step("book", t.n, len(mine), t.rel))
                outcomes[t.n] = _run_one(summarizer, t.book, t.rel, t.md, t.js, refs_dir, results, report)
        else:
            assert isinstance(summarizer, Summarizer)
            _run_together(summarizer, todo, parallel, len(mine), refs_dir, results, report, outcomes)
    report(Step("book", len(mine), len(mine)))
    if shard.world > 1:
        merge_parts(out, [b.relative_to(directory).as_posix() for b in books], shard.world)
    return BatchReport(tuple(outcomes[n] for n in sorted(outcomes)))


@dataclass(frozen=True)
class _Todo:
    """A book this run still has to summarize: its place in the share, path, name and outputs."""

    n: int
    book: Path
    rel: str
    md: Path
    js: Path


def _run_together(
    summarizer: Summarizer,
    todo: Sequence[_Todo],
    rows: int,
    share: int,
    refs_dir: str | Path | None,
    results: ResultsLog,
    report: Progress,
    outcomes: dict[int, BookOutcome],
) -> None:
    """Stream ``todo`` ``rows`` books at a time, then summarize, write and log each as its row
    finishes; a book that cannot be read is logged as an error and left out of the batch."""
    taken: list[tuple[_Todo, Book]] = []  # the books in the batch, in the order they joined it

    def books() -> Iterator[Book]:
        for t in todo:
            t0 = time.perf_counter()
            try:
                book = load_book(t.book, password=summarizer.cfg.password)
            except Exception as e:  # noqa: BLE001 - as in _run_one: the log keeps why, the batch goes on
                outcomes[t.n] = _failed(t.rel, e, t0, results)
                continue
            taken.append((t, book))
            yield book

    for streamed in summarizer.read_together(books(), rows, report):
        t, book = taken[streamed.index]
        report(Step("book", len(outcomes), share, t.rel))
        write = functools.partial(_write_streamed, summarizer, book, streamed)
        outcomes[t.n] = _run_one(write, t.book, t.rel, t.md, t.js, refs_dir, results, report)


def _write_streamed(
    summarizer: Summarizer,
    book: Book,
    streamed: Streamed,
    _path: Path,
    refs: Sequence[str],
    *,
    progress: Progress,
) -> SummaryResult:
    """A ``BookSummarizer`` for a book ``read_together`` has read: its summary from that state."""
    return summarizer(book, refs, progress=progress, streamed=streamed)


def merge_parts(out: Path, books: Sequence[str], world: int) -> bool:
    """Merge the parts of a ``world``-process batch into ``OUT/results.jsonl`` once every book of
    ``books`` has a record there or in ``results.jsonl`` -> whether it merged. Each book appears
    once, with its latest record (a part's over ``results.jsonl``'s), in the order of ``books``."""
    parts = [out / _PART.format(rank=r, world=world) for r in range(world)]
    latest = _latest(read_records(out / RESULTS))
    for part in parts:
        latest.update(_latest(read_records(part)))
    if any(b not in latest for b in books):
        return False  # another process still has books to do: the last one to finish merges
    write_atomic(out / RESULTS, "".join(json.dumps(latest[b], ensure_ascii=False) + "\n" for b in books))
    for part in parts:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
    return True


def _latest(records: Sequence[dict]) -> dict[str, dict]:
    """Book -> its last record."""
    return {r["book"]: r for r in records}


def _done(record: dict | None, files: Sequence[Path]) -> bool:
    """Whether ``record`` says its book was summarized and the book's files are still there."""
    return bool(record and record["status"] == "ok" and all(f.is_file() for f in files))


def _shard_device(device: str, shard: Shard) -> str:
    """One GPU per process on a machine: ``cuda:<local rank>`` where ``device`` would be CUDA."""
    if device == "cuda" or device == "auto":
        import torch

        if torch.cuda.is_available():
            return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return device


def _run_one(summarizer, book, rel, md, js, refs_dir, results, report) -> BookOutcome:
    """Summarize, write and log one book; any failure becomes an error record, not an exception."""
    t0 = time.perf_counter()
    record = {"book": rel}
    try:
        refs = [read_text_file(r) for r in find_references(book, Path(refs_dir) if refs_dir else None)]
        result = summarizer(book, refs, progress=report)
        write_outputs(result, md, js)
    except OutputError:
        raise  # a full disk or a read-only folder fails every later book too: stop now
    except Exception as e:  # noqa: BLE001 - one bad book must not stop a long batch; the log keeps why
        return _failed(rel, e, t0, results)
    rouge = result.rouge.to_dict() if result.rouge else None
    results.append(
        {
            **record,
            "status": "ok",
            "summary_md": md.as_posix(),
            "summary_json": js.as_posix(),
            "references": len(refs),
            "rouge": rouge,
            "seconds": _since(t0),
        }
    )
    return BookOutcome(rel, "ok", rouge=result.rouge)


def _failed(rel: str, e: Exception, t0: float, results: ResultsLog) -> BookOutcome:
    """Log a book's failure (its one-line message; the exception's type where it is not infsum's)."""
    message = str(e) if isinstance(e, InfsumError) else f"{type(e).__name__}: {e}"
    results.append({"book": rel, "status": "error", "message": message, "seconds": _since(t0)})
    return BookOutcome(rel, "error", message)


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)
