"""Book -> summary (+ ROUGE): the library's main job, the one entry point for every strategy.

``summarize(book, cfg)`` reads the book, loads what the configured strategy needs (the model; for
``infini`` the model with its memory and adapter), runs the strategy (``infsum.strategies``: the
default streams the whole book through the Infini memory and writes the summary from it), trims a
model's cut-off last sentence, scores against references, and returns a ``SummaryResult`` that the
CLI renders as Markdown or JSON. A ``Summarizer`` loads the model once and reuses it across books
(the batch runner and ``bench/quality.py`` use one); ``Summarizer.read_together`` streams several
books side by side, one row of a batch each, and each book's summary is then written from its state
(``infsum batch --parallel``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import __version__, strategies
from .config import SummarizeConfig
from .errors import ConfigError
from .names import characters, unsupported_names
from .progress import Progress, Step, ignore
from .prompt import clean_summary, summary_instruction
from .readers import Book, load_book
from .scoring import METRICS, RougeScores, score
from .strategies import STRATEGIES, Job, get_strategy

if TYPE_CHECKING:
    from .engine import ReaderState, Ready
    from .models import LoadedModel

log = logging.getLogger("infsum")
_HEADING, _FOOTER = "# Summary of ", "\n\n---\n*infsum "  # the frame of SummaryResult.markdown
_NOTES = "\n\n## Chapter notes\n\n"  # what follows the summary there with --chapters


class Streamed(NamedTuple):
    """One book read by ``Summarizer.read_together``: its index in the books given, its memory
    state, the seconds of the batch's forwards while it was in the batch (shared with the books
    beside it) and how many books the batch read side by side."""

    index: int
    state: ReaderState
    seconds: float
    rows: int


@dataclass(frozen=True)
class SummaryResult:
    """A summary and everything needed to trust and reproduce it."""

    summary: str
    input: str
    title: str | None
    author: str | None
    words: int  # words in the book
    tokens: int  # tokens streamed through the model (0 for extractive strategies)
    segments: int
    segment_len: int
    model: str | None  # None for strategies that use no model
    adapter: str | None
    update: str
    memory: bool
    strategy: str
    device: str | None
    generation: dict
    seconds: dict[str, float]  # read, load, stream, generate
    tokens_per_s: float
    peak_rss_mb: float
    infsum_version: str
    rouge: RougeScores | None = None
    exact_tokens: int = 0  # the exact-token store beside the memory (0 = none)
    evidence_tokens: int = 0  # infini: central passages in the final prompt, in tokens (0 = none)
    cast: int = 0  # infini: most mentioned names given in the final prompt
    dtype: str | None = None  # the model weights' dtype ("float32", "bfloat16"); None without a model
    # the weight copies decoded tokens read on a CPU under --dtype auto ("float16" of float32 weights,
    # "int4" of bfloat16 ones; docs/speed.md); None: the weights themselves
    decode_weights: str | None = None
    characters: tuple[str, ...] = ()  # the book's most mentioned names (infsum.names.characters)
    unsupported_names: tuple[str, ...] = ()  # names in the summary that the book never mentions
    instruction: str | None = None  # what the model was asked (its {words} filled); None: no model
    # --chapters: {title, words, tokens, note} per chapter (or per fixed span: chapter_notes_by "span")
    chapters: tuple[dict, ...] = ()
    chapter_notes_by: str | None = None  # "chapter", "span" (a book without chapters) or None
    # books streamed side by side in one batch, this one included (infsum batch --parallel); its
    # seconds["stream"] are then the batch's, shared with the others
    parallel: int = 1
    # infini: the parts the summary was written in along the book (1: whole, after the book;
    # SummarizeConfig.part_words)
    parts: int = 1

    @property
    def summary_words(self) -> int:
        """Length of the summary in whitespace-separated words."""
        return len(self.summary.split())

    def to_dict(self) -> dict:
        """The JSON record written to ``<stem>.summary.json`` and printed by ``infsum BOOK --json``."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "rouge"}
        out["characters"], out["unsupported_names"] = list(self.characters), list(self.unsupported_names)
        out["chapters"] = [dict(c) for c in self.chapters]
        out["summary_words"] = self.summary_words
        out["rouge"] = self.rouge.to_dict() if self.rouge else None
        return out

    def text(self) -> str:
        """The summary alone (``--format txt``)."""
        return self.summary

    def markdown(self) -> str:
        """``# Summary of <title>``, the summary, and a footer saying how it was made."""
        name = self.title or Path(self.input).stem
        by = f" by {self.author}" if self.author else ""
        how = f"{self.strategy} strategy" if self.model is None else f"model {self.model}"
        if self.model is not None and self.strategy == "infini":
            how += f" ({'adapter ' + Path(self.adapter).name if self.adapter else 'no adapter'}, "
            how += f"{self.update} memory {'on' if self.memory else 'off'}"
            how += f", {self.exact_tokens} exact tokens)" if self.exact_tokens else ")"
            if self.evidence_tokens or self.cast:
                how += f", prompt: {self.evidence_tokens} tokens of central passages, {self.cast} names"
            if self.parts > 1:
                how += f", written in {self.parts} parts along the book"
        if self.tokens:
            how += f", {self.tokens:,} tokens in {self.segments} segments of {self.segment_len}"
        total = sum(self.seconds.values())
        notes = ""
        if self.characters:
            notes += f"*Main characters (most named in the book): {', '.join(self.characters)}.*\n"
        if self.unsupported_names:
            notes += f"*Names the book never mentions: {', '.join(self.unsupported_names)}.*\n"
        return (
            f"{_HEADING}{name}{by}\n\n{self.summary.strip()}{self._chapter_sections()}{_FOOTER}"
            f"{self.infsum_version}: {how}, {total:.1f} s.*\n{notes}"
        )

    def _chapter_sections(self) -> str:
        """``## Chapter notes`` and a section per chapter, after the summary (empty without notes)."""
        if not self.chapters:
            return ""
        said = (
            f"*The book has no chapters: one note per {strategies.NOTE_SPAN_TOKENS:,} tokens.*\n\n"
            if self.chapter_notes_by == "span"
            else ""
        )
        parts = "\n\n".join(
            f"### {c['title']}\n\n{c['note'].strip()}\n\n*{c['words']:,} words, {c['tokens']:,} tokens.*"
            for c in self.chapters
        )
        return f"{_NOTES}{said}{parts}"


def summary_body(text: str) -> str:
    """The summary inside infsum's own Markdown (``SummaryResult.markdown``): ``text`` without its
    ``# Summary of`` heading, its chapter notes and its footer; any other text as it is."""
    if not text.startswith(_HEADING):
        return text
    body = text.partition("\n\n")[2]
    return (body.rpartition(_FOOTER)[0] or body).partition(_NOTES)[0]


def rouge_from_dict(d: dict) -> RougeScores:
    """Rebuild ``RougeScores`` from its ``to_dict()`` form (``overall`` is recomputed)."""
    from .scoring import Rouge

    return RougeScores(**{m: Rouge(**d[m]) for m in METRICS})


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    try:
        import resource
    except ImportError:  # Windows: no peak counter, report the current size
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class Summarizer:
    """Summarizes books with ``cfg``; the model is loaded on first use and then reused."""

    def __init__(self, cfg: SummarizeConfig, *, model: LoadedModel | None = None) -> None:
        strategy = get_strategy(cfg.strategy)
        if cfg.instruction is not None and not strategy.needs_model:
            models = ", ".join(s.name for s in STRATEGIES.values() if s.needs_model)
            raise ConfigError(
                f"strategy {strategy.name!r} picks sentences and takes no instruction: "
                f"leave out --instruction, or use a model strategy ({models})"
            )
        if cfg.chapter_words is not None and strategy.name != "infini":
            raise ConfigError(
                f"--chapters writes notes as the book streams through the memory: strategy "
                f"{strategy.name!r} does not stream it; use --strategy infini"
            )
        self.cfg = cfg
        self._loaded = model
        self._infini = None  # the engine's Ready (InfiniModel, adapter path or None), built once

    def __call__(
        self,
        book: str | Path | Book,
        references: Sequence[str] = (),
        *,
        progress: Progress | None = None,
        state_path: str | Path | None = None,
        from_state: str | Path | None = None,
        streamed: Streamed | None = None,
    ) -> SummaryResult:
        """Summarize one book (a path or a ``Book``); score it when reference texts are given;
        save the memory state after reading to ``state_path`` when given; with ``from_state`` (a
        state file saved from this book, model and adapter) write from that memory instead of
        streaming the book again (the book is still parsed: the names check and the record need it);
        with ``streamed`` (this book from ``read_together``) write from the state read there."""
        report = progress or ignore
        strategy = get_strategy(self.cfg.strategy)
        readers = " or ".join(s.name for s in STRATEGIES.values() if s.memory)
        for path in (state_path, from_state):
            if path is not None and not strategy.memory:
                raise ConfigError(f"{path}: only the {readers} strategy has a memory state to save or use")
        if from_state is not None and self.cfg.chapter_words is not None:
            raise ConfigError(
                f"{from_state}: chapter notes are written while the book streams; leave out --state"
            )
        if state_path is not None and from_state is not None:
            raise ConfigError(
                f"{from_state}: the summary is written from a saved state; leave out --save-state"
            )
        t0 = time.perf_counter()
        if not isinstance(book, Book):
            report(Step("read", 0, 1))
            book = load_book(book, password=self.cfg.password)
        seconds = {"read": time.perf_counter() - t0}
        loaded = infini = None
        if strategy.needs_model:
            t0 = time.perf_counter()
            loaded = self.loaded(report)
            infini = self.infini(report) if strategy.memory else None
            seconds["load"] = time.perf_counter() - t0
        state = streamed.state if streamed is not None else None
        if from_state is not None:
            from .engine import check_identity, load_state

            t0 = time.perf_counter()
            state = load_state(from_state)
            check_identity(state, from_state, model=loaded.name, adapter=infini.adapter, book=book)
            seconds["state"] = time.perf_counter() - t0
        job = Job(
            book,
            self.cfg.words,
            self.cfg.generation,
            loaded=loaded,
            infini=infini,
            progress=report,
            state_path=Path(state_path) if state_path is not None else None,
            instruction=self.cfg.instruction,
            state=state,
            chapter_words=self.cfg.chapter_words,
            evidence_tokens=self.cfg.evidence_tokens,
            cast=self.cfg.cast,
            part_words=self.cfg.part_words,
        )
        t0 = time.perf_counter()
        draft = strategy.run(job)
        seconds.update(draft.seconds or {"generate": time.perf_counter() - t0})
        if streamed is not None:
            seconds["stream"] = streamed.seconds
        # a model writes until its token budget and talks about its length: prompt.clean_summary
        summary = clean_summary(draft.summary, self.cfg.words) if strategy.needs_model else draft.summary
        invented = unsupported_names(summary, book.text)
        if invented:
            log.warning(
                "%s: the summary names %s, which the book never mentions", book.source, ", ".join(invented)
            )
        stream_s = seconds.get("stream", 0.0)
        generation = draft.generation or asdict(self.cfg.generation)
        return SummaryResult(
            summary=summary,
            input=book.source,
            title=book.title,
            author=book.author,
            words=book.words,
            tokens=draft.tokens,
            segments=draft.segments,
            segment_len=self.cfg.memory.segment_len,
            model=loaded.name if loaded else None,
            adapter=draft.adapter,
            update=self.cfg.memory.update,
            memory=self.cfg.memory.enabled,
            exact_tokens=self.cfg.memory.exact_tokens,
            evidence_tokens=self.cfg.evidence_tokens if strategy.memory else 0,
            cast=self.cfg.cast if strategy.memory else 0,
            strategy=self.cfg.strategy,
            device=str(loaded.device) if loaded else None,
            dtype=str(loaded.dtype).removeprefix("torch.") if loaded else None,
            decode_weights=loaded.decode_weights if loaded else None,
            generation=generation if loaded else {},
            seconds={k: round(v, 3) for k, v in seconds.items()},
            tokens_per_s=round(draft.tokens / stream_s, 1) if stream_s else 0.0,
            peak_rss_mb=round(peak_rss_mb(), 1),
            infsum_version=__version__,
            rouge=score(summary, references) if references else None,
            characters=tuple(characters(c.text for c in book.chapters)),
            unsupported_names=tuple(invented),
            instruction=summary_instruction(self.cfg.words, self.cfg.instruction) if loaded else None,
            chapters=tuple(asdict(n) for n in draft.chapters),
            chapter_notes_by=(
                ("chapter" if sum(1 for c in book.chapters if c.text) > 1 else "span")
                if draft.chapters
                else None
            ),
            parallel=streamed.rows if streamed is not None else 1,
            parts=draft.parts,
        )

    def read_together(
        self, books: Iterable[Book], rows: int, progress: Progress | None = None
    ) -> Iterator[Streamed]:
        """Stream ``books`` through the memory side by side, ``rows`` of them in one batch
        (``InfiniReader.read_many``: each row its own memory; a finished book's row takes the next
        book) -> a ``Streamed`` for each book as soon as it is read, in the order they finish; give it
        to ``__call__(book, streamed=...)`` to write the summary. ``books`` is consumed lazily.
        ConfigError, at once, for a strategy without memory or with chapter notes (written while
        the book streams). ``progress`` gets ``Step("stream", tokens, tokens of the books taken)``."""
        strategy = get_strategy(self.cfg.strategy)
        if not strategy.memory:
            raise ConfigError(
                f"--parallel streams books side by side through the memory: strategy "
                f"{strategy.name!r} does not stream them; use --strategy infini or --parallel 1"
            )
        if self.cfg.chapter_words is not None:
            raise ConfigError("--chapters writes notes while each book streams: use --parallel 1 with it")
        if rows < 1:
            raise ConfigError(f"--parallel {rows}: read at least 1 book at a time")
        return self._read_together(books, rows, progress or ignore)

    def _read_together(self, books: Iterable[Book], rows: int, report: Progress) -> Iterator[Streamed]:
        """The generator behind ``read_together`` (its checks run before the first book)."""
        from .engine import InfiniReader
        from .prompt import book_tokens

        model, _ = self.infini(report)
        tok = self.loaded(report).tokenizer
        clock = 0.0  # seconds spent in the batch's forwards so far
        joined: list[float] = []  # the clock when each book joined the batch

        def texts() -> Iterator[list[int]]:
            for book in books:
                joined.append(clock)
                yield book_tokens(tok, book)[0]

        def on_tokens(done: int, total: int) -> None:
            report(Step("stream", done, total, f"{rows} books at a time"))

        read = InfiniReader(model).read_many(texts(), rows, on_tokens)
        while True:
            t0 = time.perf_counter()
            got = next(read, None)
            clock += time.perf_counter() - t0
            if got is None:
                return
            index, state = got
            yield Streamed(index, state, clock - joined[index], 1 if model.cfg.exact_tokens else rows)

    # -- model and adapter

    def loaded(self, report: Progress) -> LoadedModel:
        """The loaded model, loading it now if this is the first use."""
        if self._loaded is None:
            from .models import load_model

            report(Step("load", 0, 1, "loading model"))
            self._loaded = load_model(
                self.cfg.model,
                device=self.cfg.device,
                dtype=self.cfg.dtype,
                progress=lambda msg: report(Step("load", 0, 1, msg)),
            )
            report(Step("load", 1, 1))
        return self._loaded

    def infini(self, report: Progress) -> Ready:
        """The ready model (``infsum.engine.Ready``: the loaded model converted to Infini-attention,
        with the configured adapter loaded, and that adapter's path or None)."""
        if self._infini is None:
            from .engine import ready

            self._infini = ready(self.loaded(report), self.cfg.memory, self.cfg.adapter)
        return self._infini


def summarize(
    book: str | Path | Book,
    cfg: SummarizeConfig | None = None,
    *,
    references: Sequence[str] = (),
    progress: Progress | None = None,
    model: LoadedModel | None = None,
    state_path: str | Path | None = None,
    from_state: str | Path | None = None,
) -> SummaryResult:
    """Summarize ``book`` (a path or a ``Book``) with ``cfg`` (defaults: the default model, about
    400 words); score against ``references`` (texts) when given. Pass ``model`` to reuse a loaded
    one, ``state_path`` to save the memory state after reading, ``from_state`` to write from a
    state saved from this book instead of reading it again."""
    summarizer = Summarizer(cfg or SummarizeConfig(), model=model)
    return summarizer(book, references, progress=progress, state_path=state_path, from_state=from_state)
