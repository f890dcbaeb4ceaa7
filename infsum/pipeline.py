"""Book -> summary (+ ROUGE): the library's main job, as one function over the readers and the engine.

``summarize(book, cfg)`` reads the book, builds one chat turn (the book, then the instruction),
streams the book's tokens through the Infini model segment by segment, generates the summary from
the memory, and returns a ``SummaryResult`` that the CLI renders as Markdown or JSON. A
``Summarizer`` loads the model once and reuses it across books (the batch runner uses one).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import SummarizeConfig
from .errors import ConfigError
from .prompt import INSTRUCTION, book_tokens, chat_prompt, max_new_tokens, min_new_tokens, trim_to_sentence
from .readers import Book, load_book
from .scoring import METRICS, RougeScores, score

if TYPE_CHECKING:
    from .models import LoadedModel


@dataclass(frozen=True)
class Step:
    """One progress report: ``stage`` is "read", "load", "stream", "generate" (or "book" in a batch);
    ``done`` of ``total`` in the stage's unit (tokens for stream and generate); ``detail`` is the
    chapter being read, the book of a batch, or a model-loading message."""

    stage: str
    done: int
    total: int
    detail: str | None = None


Progress = Callable[[Step], None]


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

    @property
    def summary_words(self) -> int:
        """Length of the summary in whitespace-separated words."""
        return len(self.summary.split())

    def to_dict(self) -> dict:
        """The JSON record written to ``<stem>.summary.json`` and printed by ``infsum BOOK --json``."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "rouge"}
        out["summary_words"] = self.summary_words
        out["rouge"] = self.rouge.to_dict() if self.rouge else None
        return out

    def markdown(self) -> str:
        """``# Summary of <title>``, the summary, and a footer saying how it was made."""
        name = self.title or Path(self.input).stem
        by = f" by {self.author}" if self.author else ""
        how = f"{self.strategy} strategy" if self.model is None else f"model {self.model}"
        if self.model is not None and self.strategy == "infini":
            how += f" ({'adapter ' + Path(self.adapter).name if self.adapter else 'no adapter'}, "
            how += f"{self.update} memory {'on' if self.memory else 'off'})"
        if self.tokens:
            how += f", {self.tokens:,} tokens in {self.segments} segments of {self.segment_len}"
        total = sum(self.seconds.values())
        return (
            f"# Summary of {name}{by}\n\n{self.summary.strip()}\n\n"
            f"---\n*infsum {self.infsum_version}: {how}, {total:.1f} s.*\n"
        )


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


def chapter_at(starts: Sequence[tuple[int, str]], offset: int) -> str | None:
    """Title of the chapter whose tokens cover ``offset``, from (first token, title) pairs in order."""
    current = None
    for start, title in starts:
        if start > offset:
            break
        current = title
    return current


class Summarizer:
    """Summarizes books with ``cfg``; the model is loaded on first use and then reused."""

    def __init__(self, cfg: SummarizeConfig, *, model: LoadedModel | None = None) -> None:
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
    ) -> SummaryResult:
        """Summarize one book (a path or a ``Book``); score it when reference texts are given;
        save the memory state after reading to ``state_path`` when given."""
        report = progress or (lambda step: None)
        t0 = time.perf_counter()
        if not isinstance(book, Book):
            report(Step("read", 0, 1))
            book = load_book(book, password=self.cfg.password)
        seconds = {"read": time.perf_counter() - t0}
        if self.cfg.strategy == "infini":
            fields = self._infini_summary(book, seconds, report, state_path)
        elif state_path is not None:
            raise ConfigError(f"{state_path}: only the infini strategy has a memory state to save")
        else:
            fields = self._strategy_summary(book, seconds, report)
        stream_s = seconds.get("stream", 0.0)
        return SummaryResult(
            input=book.source,
            title=book.title,
            author=book.author,
            words=book.words,
            segment_len=self.cfg.memory.segment_len,
            update=self.cfg.memory.update,
            memory=self.cfg.memory.enabled,
            strategy=self.cfg.strategy,
            seconds={k: round(v, 3) for k, v in seconds.items()},
            tokens_per_s=round(fields["tokens"] / stream_s, 1) if stream_s else 0.0,
            peak_rss_mb=round(peak_rss_mb(), 1),
            infsum_version=__version__,
            rouge=score(fields["summary"], references) if references else None,
            **fields,
        )

    # -- model and adapter

    def loaded(self, report: Progress) -> LoadedModel:
        """The loaded model, loading it now if this is the first use."""
        if self._loaded is None:
            from .models import load_model

            report(Step("load", 0, 1, "loading model"))
            self._loaded = load_model(
                self.cfg.model, device=self.cfg.device, progress=lambda msg: report(Step("load", 0, 1, msg))
            )
            report(Step("load", 1, 1))
        return self._loaded

    def infini(self, report: Progress):
        """The ready model (``infsum.engine.Ready``: the loaded model converted to Infini-attention,
        with the configured adapter loaded, and that adapter's path or None)."""
        if self._infini is None:
            from .engine import ready

            self._infini = ready(self.loaded(report), self.cfg.memory, self.cfg.adapter)
        return self._infini

    # -- the two ways to summarize

    def _infini_summary(
        self, book: Book, seconds: dict[str, float], report: Progress, state_path: str | Path | None
    ) -> dict:
        from .engine import InfiniReader, save_state

        t0 = time.perf_counter()
        loaded = self.loaded(report)
        model, adapter = self.infini(report)
        seconds["load"] = time.perf_counter() - t0
        tok = loaded.tokenizer
        ids, starts = book_tokens(tok, book)
        seg = self.cfg.memory.segment_len
        reader = InfiniReader(model)

        def on_tokens(done: int, total: int) -> None:
            report(Step("stream", done, total, chapter_at(starts, max(done - 1, 0))))

        t0 = time.perf_counter()
        state = reader.read(ids, progress=on_tokens)
        seconds["stream"] = time.perf_counter() - t0
        if state_path is not None:
            save_state(state, state_path)
        budget = max_new_tokens(self.cfg.words)
        gen = replace(self.cfg.generation, max_new_tokens=budget, min_new_tokens=min_new_tokens(budget))
        # the book (with the turn's opening) is in memory: the generation prompt closes the turn
        prompt = list(chat_prompt(tok, INSTRUCTION.format(words=self.cfg.words)).closing)
        out: list[int] = []
        t0 = time.perf_counter()
        reader.generate(
            state,
            prompt,
            gen,
            tok.eos_ids,
            on_token=lambda t: (out.append(t), report(Step("generate", len(out), gen.max_new_tokens))),
        )
        seconds["generate"] = time.perf_counter() - t0
        return {
            "summary": trim_to_sentence(tok.decode(out, skip_special=True)),
            "tokens": len(ids),
            "segments": math.ceil(len(ids) / seg),
            "model": loaded.name,
            "adapter": str(adapter) if adapter else None,
            "device": str(loaded.device),
            "generation": asdict(gen),
        }

    def _strategy_summary(self, book: Book, seconds: dict[str, float], report: Progress) -> dict:
        from .strategies import MODEL_STRATEGIES, run_strategy

        loaded = None
        if self.cfg.strategy in MODEL_STRATEGIES:
            t0 = time.perf_counter()
            loaded = self.loaded(report)
            seconds["load"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = run_strategy(
            self.cfg.strategy,
            book,
            words=self.cfg.words,
            loaded=loaded,
            gen=self.cfg.generation,
            progress=lambda d, t: report(Step("generate", d, t)),
        )
        seconds["generate"] = time.perf_counter() - t0
        return {
            "summary": trim_to_sentence(summary) if loaded else summary,
            "tokens": 0,
            "segments": 0,
            "model": loaded.name if loaded else None,
            "adapter": None,
            "device": str(loaded.device) if loaded else None,
            "generation": asdict(self.cfg.generation) if loaded else {},
        }


def summarize(
    book: str | Path | Book,
    cfg: SummarizeConfig | None = None,
    *,
    references: Sequence[str] = (),
    progress: Progress | None = None,
    model: LoadedModel | None = None,
    state_path: str | Path | None = None,
) -> SummaryResult:
    """Summarize ``book`` (a path or a ``Book``) with ``cfg`` (defaults: the default model, about
    400 words); score against ``references`` (texts) when given. Pass ``model`` to reuse a loaded
    one, ``state_path`` to save the memory state after reading."""
    summarizer = Summarizer(cfg or SummarizeConfig(), model=model)
    return summarizer(book, references, progress=progress, state_path=state_path)
