"""The summarizing strategies, one registry: the Infini summary and the baselines it is measured against.

``STRATEGIES`` maps each name (the CLI's ``--strategy`` choices) to a ``Strategy``: what it runs,
whether it needs the model and whether it reads the book through the Infini memory. The pipeline
runs every strategy the same way (``infsum.summarize``; ``bench/quality.py`` calls it too): it loads
what the strategy needs, calls it with a ``Job`` and trims what a model wrote.

- ``infini`` streams the whole book through the converted model, segment by segment, and writes
  the summary from the memory (the tool's purpose);
- ``lead`` and ``textrank`` are extractive (``infsum.extractive``) and need no model;
- ``truncate-head``, ``truncate-tail`` and ``hierarchical`` run the same base model with ordinary
  attention (the engine with memory off, one segment) on what fits its context window.

A new strategy is a function ``(Job) -> Draft`` and one entry in ``STRATEGIES``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import GenerationConfig
from .errors import ConfigError
from .names import characters
from .progress import Counter, Progress, Step, ignore
from .prompt import (
    CHAPTER_INSTRUCTION,
    CHUNK_INSTRUCTION,
    book_tokens,
    chapter_at,
    chat_prompt,
    drop_length_talk,
    max_new_tokens,
    min_new_tokens,
    summary_instruction,
    trim_to_sentence,
)

if TYPE_CHECKING:
    from .engine import InfiniReader, ReaderState, Ready
    from .models import LoadedModel
    from .readers import Book
    from .tokenizer import Tokenizer

CHUNK_TOKENS = 1500  # hierarchical: book tokens per first-level chunk, and the most per later group
CHUNK_SUMMARY_WORDS = 120  # hierarchical: length asked of every chunk (and group) summary
NOTE_SPAN_TOKENS = 8192  # chapter notes: a book without chapters gets one note per this many tokens
MIN_PART_TOKENS = 256  # summary parts: a book gets no more parts than it has this many tokens


@dataclass(frozen=True)
class Job:
    """What a strategy is given: the book, the summary's length, the decoding settings and, as the
    strategy declares, the loaded model and the ready Infini model (its memory configuration and
    adapter); ``progress`` receives ``Step`` events, ``state_path`` asks for the memory state;
    ``instruction`` is the user's summary instruction (None: ``prompt.INSTRUCTION``); ``state``,
    a memory state already read from this book (``infini`` then writes from it, reading nothing)."""

    book: Book
    words: int
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    loaded: LoadedModel | None = None
    infini: Ready | None = None
    progress: Progress = ignore
    state_path: Path | None = None
    instruction: str | None = None
    state: ReaderState | None = None
    chapter_words: int | None = None  # infini: a note of this many words per chapter as it streams

    @property
    def summary_instruction(self) -> str:
        """The instruction that asks the model for the summary, its ``{words}`` filled in."""
        return summary_instruction(self.words, self.instruction)

    evidence_tokens: int = 0  # infini: the book's central passages in the final prompt, in tokens
    cast: int = 0  # infini: this many main characters named in the final prompt
    part_words: int = 0  # infini: the summary in parts of about this many words (summary_parts); 0: whole

    def model(self, name: str) -> LoadedModel:
        """The loaded model; ConfigError when the caller gave none."""
        if self.loaded is None:
            raise ConfigError(f"strategy {name!r} runs a model: pass loaded=load_model(...)")
        return self.loaded


@dataclass(frozen=True)
class Draft:
    """What a strategy returns: the summary as written (the pipeline trims a model's cut-off last
    sentence), and how it was made."""

    summary: str
    tokens: int = 0  # tokens streamed through the memory
    segments: int = 0
    adapter: str | None = None
    generation: dict | None = None  # the decoding settings used, when they differ from the Job's
    seconds: dict[str, float] = field(default_factory=dict)  # stages timed inside (stream, generate)
    chapters: tuple[ChapterNote, ...] = ()  # infini with chapter_words: the notes, in reading order
    parts: int = 1  # infini: the parts the summary was written in, along the book (1: whole, at the end)


@dataclass(frozen=True)
class Strategy:
    """One way to summarize a book: ``run(job) -> Draft``; ``needs_model``: the pipeline loads the
    model first; ``memory``: it reads through the Infini memory (the pipeline builds the ready model
    with the configured memory and adapter, and the memory state can be saved)."""

    name: str
    run: Callable[[Job], Draft]
    needs_model: bool
    memory: bool
    help: str


# ---------------------------------------------------------------- the Infini summary


def infini(job: Job) -> Draft:
    """Stream the chat opening and the whole book through the memory (or take a saved state of it)
    and write the summary from it: in ``summary_parts`` parts, each as soon as its share of the book
    has streamed (the memory of everything before, the share's end in local attention, and the
    share's central passages and names, then ``PART_INSTRUCTION``), or whole after the book (the
    end of the book, then the ask that closes the user turn: ``evidence.book_evidence``, the book's
    central passages and most mentioned names as the job asks, then the instruction). With
    ``chapter_words``, a note after each chapter too. A saved state is always written from whole,
    and so is a summary with the user's instruction. The state saved on request carries the
    book's evidence, for ``infsum ask``."""
    from .engine import InfiniReader, identity, save_state
    from .evidence import book_evidence, evidence_budget

    if job.infini is None:
        raise ConfigError("strategy 'infini' reads through the memory: pass infini=engine.ready(...)")
    tok = job.model("infini").tokenizer
    model, adapter = job.infini
    ids, starts = book_tokens(tok, job.book)
    reader = InfiniReader(model)
    spare = job.generation.spare_names
    names = characters((c.text for c in job.book.chapters), top=spare) if spare else ()
    whole = job.state is not None or job.instruction is not None
    n_parts = 1 if whole else summary_parts(job.words, job.part_words, len(ids))

    def on_tokens(done: int, total: int) -> None:
        job.progress(Step("stream", done, total, chapter_at(starts, max(done - 1, 0))))

    t0 = time.perf_counter()
    notes: tuple[ChapterNote, ...] = ()
    parts: tuple[str, ...] = ()
    notes_s = parts_s = 0.0
    gen = job.generation
    if job.state is not None:  # read once: a saved state of this book
        state = job.state
    else:
        state, notes, notes_s, parts, parts_s, gen = read_writing(
            job, reader, ids, starts, on_tokens, n_parts, names
        )
    stream_s = time.perf_counter() - t0 - notes_s - parts_s
    t0 = time.perf_counter()
    evidence = None
    if n_parts == 1 or job.state_path is not None:
        evidence = book_evidence(
            tok,
            job.book.text,
            (c.text for c in job.book.chapters),
            evidence_tokens=evidence_budget(job.evidence_tokens, model.cfg.segment_len),
            cast=job.cast,
        )
    if job.state_path is not None:
        ident = identity(job.model("infini").name, adapter, job.book)
        save_state(state, job.state_path, identity=ident, context=evidence.context())
    if n_parts == 1:
        budget = max_new_tokens(job.words)

        def count(n: int) -> None:
            job.progress(Step("generate", n, budget))

        text, gen = answer(
            reader, state, tok, evidence.ask(job.summary_instruction), job.words, gen, count, names
        )
    else:
        text = "\n\n".join(parts)
    return Draft(
        text,
        tokens=len(ids),
        segments=math.ceil(len(ids) / model.cfg.segment_len),
        adapter=str(adapter) if adapter else None,
        generation=asdict(gen),
        seconds={
            "stream": stream_s,
            **({"notes": notes_s} if notes else {}),
            "generate": time.perf_counter() - t0 + parts_s,
        },
        chapters=notes,
        parts=n_parts,
    )


def summary_parts(words: int, part_words: int, tokens: int) -> int:
    """How many parts a summary of ``words`` words is written in along a book of ``tokens`` tokens:
    about ``part_words`` words each, at most one per ``MIN_PART_TOKENS`` tokens; 1 (written whole,
    after the book) for ``part_words`` 0 or a summary of less than one and a half parts."""
    if part_words <= 0:
        return 1
    return max(1, min(round(words / part_words), tokens // MIN_PART_TOKENS))


def share_bounds(tokens: int, parts: int) -> list[int]:
    """The token offsets 0 = b0 < b1 < ... < b_parts = ``tokens`` of ``parts`` equal shares of a
    book: part k is written after tokens b_k..b_(k+1) (training's part examples cut them alike)."""
    return [round(i * tokens / parts) for i in range(parts + 1)]


def answer(
    reader: InfiniReader,
    state: ReaderState,
    tok: Tokenizer,
    ask: str,
    words: int,
    generation: GenerationConfig,
    on_count: Callable[[int], None] | None = None,
    names: Sequence[str] = (),
) -> tuple[str, GenerationConfig]:
    """The model's answer of about ``words`` words to ``ask``, closing the user turn whose opening
    and body ``state`` has read (the state is not changed: one read serves any number of asks) ->
    (the text, the decoding settings used). ``on_count`` sees the number of tokens generated; the
    tokens of the first ``generation.spare_names`` of ``names`` (the book's, most mentioned first)
    are spared by the repetition rules."""
    from .evidence import name_tokens

    budget = max_new_tokens(words)
    gen = replace(generation, max_new_tokens=budget, min_new_tokens=min_new_tokens(budget))
    out: list[int] = []

    def on_token(t: int) -> None:
        out.append(t)
        if on_count is not None:
            on_count(len(out))

    spared = name_tokens(tok, names[: gen.spare_names])
    reader.generate(state, chat_prompt(tok, ask).closing, gen, tok.eos_ids, on_token=on_token, spared=spared)
    return tok.decode(out, skip_special=True), gen


@dataclass(frozen=True)
class ChapterNote:
    """A note on one chapter (or, in a book without chapters, one ``NOTE_SPAN_TOKENS`` span),
    written as the book streamed: its title, words, tokens and the note."""

    title: str
    words: int
    tokens: int
    note: str


def note_spans(
    tok: Tokenizer, book: Book, ids: list[int], starts: list[tuple[int, str]]
) -> list[tuple[str, int, int, int]]:
    """(title, first token, end token, words) of each part a note is written on: the book's
    chapters (the chat opening goes with the first), or, for a book with one chapter or none,
    spans of ``NOTE_SPAN_TOKENS`` titled by their token range."""
    if len(starts) > 1:
        words = [c.words for c in book.chapters if c.text]
        bounds = [0] + [start for start, _ in starts[1:]] + [len(ids)]
        return [(title, bounds[i], bounds[i + 1], words[i]) for i, (_, title) in enumerate(starts)]
    out = []
    for a in range(0, len(ids), NOTE_SPAN_TOKENS):
        b = min(a + NOTE_SPAN_TOKENS, len(ids))
        out.append((f"Tokens {a + 1:,} to {b:,}", a, b, len(tok.decode(ids[a:b]).split())))
    return out


def read_writing(
    job: Job,
    reader: InfiniReader,
    ids: list[int],
    starts: list[tuple[int, str]],
    on_tokens: Counter,
    parts: int = 1,
    names: Sequence[str] = (),
) -> tuple[ReaderState, tuple[ChapterNote, ...], float, tuple[str, ...], float, GenerationConfig]:
    """Read ``ids`` in order, stopping wherever something is written from the state read so far
    (generating leaves the state as it was, so what is written changes nothing in the memory):
    with ``job.chapter_words``, a note of that many words after each chapter (``note_spans``;
    ``CHAPTER_INSTRUCTION`` closes the user turn); with ``parts`` above 1, a part of the summary
    after each of ``parts`` equal shares of the book, beside the share's central passages and names
    (``evidence.part_evidence``), with the book's ``names`` spared by the repetition rules -> (state,
    notes, seconds writing them, parts, seconds writing them, the parts' decoding settings)."""
    from .evidence import part_evidence

    tok = job.model("infini").tokenizer
    note_at = (
        {b: (title, a, words) for title, a, b, words in note_spans(tok, job.book, ids, starts)}
        if job.chapter_words is not None
        else {}
    )
    bounds = share_bounds(len(ids), parts)
    part_at = dict(zip(bounds[1:], bounds[:-1], strict=True)) if parts > 1 else {}
    note_budget = max_new_tokens(job.chapter_words or 1)
    note_gen = replace(job.generation, max_new_tokens=note_budget, min_new_tokens=min_new_tokens(note_budget))
    note_prompt = chat_prompt(tok, CHAPTER_INSTRUCTION.format(words=job.chapter_words)).closing
    part_words = max(1, job.words // parts)
    part_budget = max_new_tokens(part_words)
    book_start = starts[0][0] if starts else 0  # the chat opening is no passage of the book
    state, notes, written, gen = None, [], [], job.generation
    seconds = {"notes": 0.0, "parts": 0.0}
    at = 0
    for stop in sorted({*note_at, *part_at, len(ids)}):
        state = reader.read(ids[at:stop], state, progress=lambda d, _n, a=at: on_tokens(a + d, len(ids)))
        at = stop
        if stop in note_at:
            title, a, words = note_at[stop]
            t0 = time.perf_counter()
            job.progress(Step("notes", len(notes), len(note_at), title))
            note = tok.decode(reader.generate(state, note_prompt, note_gen, tok.eos_ids), skip_special=True)
            notes.append(ChapterNote(title, words, stop - a, drop_length_talk(trim_to_sentence(note))))
            seconds["notes"] += time.perf_counter() - t0
        if stop in part_at:
            t0 = time.perf_counter()
            share = tok.decode(ids[max(part_at[stop], book_start) : stop], skip_special=True)
            seg = reader.cfg.segment_len
            evidence = part_evidence(
                tok, share, evidence_tokens=job.evidence_tokens, cast=job.cast, segment_len=seg
            )
            ask = evidence.part_ask(part_words)
            done = len(written) * part_budget

            def count(n: int, done: int = done) -> None:
                job.progress(Step("generate", done + n, parts * part_budget))

            text, gen = answer(reader, state, tok, ask, part_words, job.generation, count, names)
            written.append(trim_to_sentence(text))
            seconds["parts"] += time.perf_counter() - t0
    if note_at:
        job.progress(Step("notes", len(note_at), len(note_at)))
    assert state is not None, "there is always one stop: the end of the book"
    return state, tuple(notes), seconds["notes"], tuple(written), seconds["parts"], gen


# ---------------------------------------------------------------- model baselines


class WindowSummarizer:
    """The base model with ordinary attention on one context window: text ids in, summary out.

    This is the engine with memory off and one segment as long as the model's context window
    (``max_position_embeddings``): plain causal attention, positions 0..n-1, no memory.
    """

    def __init__(self, loaded: LoadedModel, gen: GenerationConfig) -> None:
        from .config import MemoryConfig
        from .engine import InfiniModel, InfiniReader

        self.window = int(loaded.model.config.max_position_embeddings)
        cfg = MemoryConfig(segment_len=self.window, enabled=False)
        model = InfiniModel(loaded.model, cfg)
        model.decode_weights = loaded.decode_weights
        self.reader = InfiniReader(model)
        self.tok = loaded.tokenizer
        self.gen = gen

    def prompt_ids(self, text_ids: list[int], instruction: str) -> list[int]:
        """One user turn: the text, a blank line, the instruction; then the assistant's turn opens."""
        return chat_prompt(self.tok, instruction).around(text_ids)

    def budget(self, instruction: str, words: int) -> int:
        """How many text tokens fit in the window beside the prompt and a ``words``-word answer."""
        room = self.window - len(self.prompt_ids([], instruction)) - max_new_tokens(words)
        if room < 1:
            raise ConfigError(
                f"the model's {self.window}-token context cannot hold a {words}-word summary: "
                "ask for fewer --words"
            )
        return room

    def decoding(self, words: int) -> GenerationConfig:
        """The decoding settings of a ``words``-word answer: the token budget, and end-of-text
        masked before half of it (``prompt.min_new_tokens``)."""
        budget = max_new_tokens(words)
        return replace(self.gen, max_new_tokens=budget, min_new_tokens=min_new_tokens(budget))

    def summarize(
        self,
        text_ids: list[int],
        instruction: str,
        words: int,
        on_token: Callable[[int], None] | None = None,
    ) -> str:
        """The model's answer to ``instruction`` about ``text_ids`` (which must fit the budget), of
        at least half its token budget, as every model answer of infsum (``decoding``)."""
        gen = self.decoding(words)
        prompt = self.prompt_ids(text_ids, instruction)
        assert len(prompt) + gen.max_new_tokens <= self.window, "prompt and answer must fit the window"
        out = self.reader.generate(None, prompt, gen, self.tok.eos_ids, on_token=on_token)
        return self.tok.decode(out, skip_special=True).strip()


def truncate(
    model: WindowSummarizer,
    text: str,
    words: int,
    *,
    tail: bool,
    progress: Counter | None = None,
    instruction: str | None = None,
) -> str:
    """Summary from as much of ``text`` as fits the context window: its first (head) or last
    (tail) tokens. ``progress`` counts generated tokens; ``instruction`` replaces the built-in one."""
    instruction = summary_instruction(words, instruction)
    ids = model.tok.encode(text)
    keep = model.budget(instruction, words)
    ids = ids[-keep:] if tail else ids[:keep]
    total, done = max_new_tokens(words), 0

    def on_token(_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return model.summarize(ids, instruction, words, on_token)


def hierarchical(
    model: WindowSummarizer,
    text: str,
    words: int,
    *,
    progress: Counter | None = None,
    instruction: str | None = None,
) -> str:
    """Map-reduce summary: fixed chunks of ``CHUNK_TOKENS`` (fewer in a small window) summarized,
    then groups of those summaries summarized, until they fit the window beside the final prompt.
    ``progress`` counts model calls (the total grows as levels are added); ``instruction``
    replaces the built-in one in the final call (the chunk summaries keep theirs)."""
    final = summary_instruction(words, instruction)
    chunk_instruction = CHUNK_INSTRUCTION.format(words=CHUNK_SUMMARY_WORDS)
    fits = model.budget(final, words)
    size = min(CHUNK_TOKENS, model.budget(chunk_instruction, CHUNK_SUMMARY_WORDS))  # small windows
    ids = model.tok.encode(text)
    level = [ids[i : i + size] for i in range(0, len(ids), size)]
    calls, planned = 0, len(level) + 1
    while True:
        summaries = []
        for chunk in level:
            summaries.append(model.summarize(chunk, chunk_instruction, CHUNK_SUMMARY_WORDS))
            calls += 1
            if progress is not None:
                progress(calls, planned)
        joined = model.tok.encode("\n\n".join(summaries))
        if len(joined) <= fits:
            break
        level = _pack([model.tok.encode(s) for s in summaries], model.tok.encode("\n\n"), size)
        if len(level) == len(summaries):
            raise ConfigError(
                f"the model's {model.window}-token context is too small to combine chunk summaries: "
                "use another strategy"
            )
        planned += len(level)
    out = model.summarize(joined, final, words)
    if progress is not None:
        progress(planned, planned)
    return out


def _pack(parts: list[list[int]], sep: list[int], limit: int) -> list[list[int]]:
    """Consecutive ``parts`` joined by ``sep`` into groups of at most ``limit`` tokens (a part
    longer than ``limit`` makes a group by itself)."""
    groups: list[list[int]] = []
    for part in parts:
        if groups and len(groups[-1]) + len(sep) + len(part) <= limit:
            groups[-1] += sep + part
        else:
            groups.append(list(part))
    return groups


# ---------------------------------------------------------------- the registry


def _lead(job: Job) -> Draft:
    from .extractive import lead

    return Draft(lead(job.book.text, job.words))


def _textrank(job: Job) -> Draft:
    from .extractive import textrank

    return Draft(textrank(job.book.text, job.words))


def _window(job: Job, name: str) -> WindowSummarizer:
    return WindowSummarizer(job.model(name), job.generation)


def _count_generated(job: Job) -> Counter:
    return lambda done, total: job.progress(Step("generate", done, total))


def _truncate(job: Job, *, tail: bool) -> Draft:
    model = _window(job, "truncate-tail" if tail else "truncate-head")
    book, progress = job.book.text, _count_generated(job)
    summary = truncate(model, book, job.words, tail=tail, progress=progress, instruction=job.instruction)
    return Draft(summary, generation=asdict(model.decoding(job.words)))


def _truncate_head(job: Job) -> Draft:
    return _truncate(job, tail=False)


def _truncate_tail(job: Job) -> Draft:
    return _truncate(job, tail=True)


def _hierarchical(job: Job) -> Draft:
    model = _window(job, "hierarchical")
    progress = _count_generated(job)
    return Draft(
        hierarchical(model, job.book.text, job.words, progress=progress, instruction=job.instruction),
        generation=asdict(model.decoding(job.words)),  # the final answer's (the chunks': CHUNK_SUMMARY_WORDS)
    )


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("infini", infini, needs_model=True, memory=True, help="the whole book through the memory"),
        Strategy("lead", _lead, needs_model=False, memory=False, help="the book's first words"),
        Strategy("textrank", _textrank, needs_model=False, memory=False, help="the most central sentences"),
        Strategy(
            "truncate-head", _truncate_head, needs_model=True, memory=False, help="the model on the opening"
        ),
        Strategy(
            "truncate-tail", _truncate_tail, needs_model=True, memory=False, help="the model on the end"
        ),
        Strategy(
            "hierarchical", _hierarchical, needs_model=True, memory=False, help="chunk summaries, then theirs"
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; ConfigError naming the choices if there is none."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
