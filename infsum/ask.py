"""Read once, ask again: questions answered from a book's memory, read now or loaded from a state file.

``ask(source, questions, cfg)`` takes a book (a path or a ``Book``: it is streamed through the
memory, as ``infsum BOOK`` streams it, and the state can be saved) or a state file saved by
``infsum BOOK --save-state`` or by ``ask`` itself (nothing is read again: the state is checked
against the loaded model and adapter, ``engine.check_identity``). Each question closes the user
turn the book opened as the summary instruction does: after the book's central passages and most
mentioned names (``evidence.book_evidence``, ``cfg.evidence_tokens`` and ``cfg.cast``; a saved
state carries those it was saved with, held to a smaller budget when one is asked), in
``prompt.chat_prompt``'s layout. Every question is answered from the same state:
``InfiniReader.generate`` leaves the state as it was, so questions do not see each other's answers
and the order of the questions changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import SummarizeConfig
from .errors import ConfigError
from .progress import Progress, Step, ignore
from .prompt import book_tokens, chapter_at, chat_prompt, max_new_tokens, read_user_text, trim_to_sentence
from .readers import Book, load_book

if TYPE_CHECKING:
    from .models import LoadedModel

STATE_SUFFIX = ".safetensors"  # a source with this suffix is a saved state, any other a book
log = logging.getLogger("infsum")


@dataclass(frozen=True)
class Answer:
    """One question, its answer, the tokens generated and the seconds it took."""

    question: str
    answer: str
    tokens: int
    seconds: float


@dataclass(frozen=True)
class AskResult:
    """The answers, and what they were answered from."""

    answers: tuple[Answer, ...]
    input: str  # the book or the state file given
    title: str | None
    model: str
    adapter: str | None
    tokens: int  # tokens in the memory (streamed now, or before the state was saved)
    from_state: bool  # True: answered from a saved state, nothing read now
    state: str | None  # the state file loaded or saved, if any
    segment_len: int
    generation: dict
    dtype: str  # the model weights' dtype ("float32", "bfloat16")
    # the evidence each question closed with: the passages' token budget (capped at half a segment;
    # a state's own when smaller) and the names asked for; 0 and 0 from a state saved without them
    evidence_tokens: int = 0
    cast: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # read, load, stream or state, answer
    infsum_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The JSON record ``infsum ask --json`` prints."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "answers"}
        out["answers"] = [asdict(a) for a in self.answers]
        return out

    def text(self) -> str:
        """The answers alone, one paragraph each (``--format txt``)."""
        return "\n\n".join(a.answer for a in self.answers)

    def markdown(self) -> str:
        """``# Questions about <title>``, a section per question, and a footer saying how."""
        name = self.title or Path(self.input).stem
        body = "".join(f"## {a.question}\n\n{a.answer}\n\n" for a in self.answers)
        how = "a saved state" if self.from_state else "the book, read now"
        adapter = f"adapter {Path(self.adapter).name}" if self.adapter else "no adapter"
        total = sum(self.seconds.values())
        return (
            f"# Questions about {name}\n\n{body}---\n*infsum {self.infsum_version}: model {self.model} "
            f"({adapter}), from {how} ({self.tokens:,} tokens), {total:.1f} s.*\n"
        )


def is_state_file(source: str | Path | Book) -> bool:
    """Whether ``source`` names a saved state (``STATE_SUFFIX``) rather than a book."""
    return not isinstance(source, Book) and Path(source).suffix.lower() == STATE_SUFFIX


def load_questions(path: str | Path) -> list[str]:
    """The questions in a UTF-8 text file, one a line (blank lines skipped); ConfigError naming the
    file when it is missing, not text or holds no question."""
    p = Path(path)
    lines = read_user_text(p, "questions", "the questions").splitlines()
    questions = [q.strip() for q in lines if q.strip()]
    if not questions:
        raise ConfigError(f"{p}: no question in the file; write one question a line")
    return questions


def ask(
    source: str | Path | Book,
    questions: Sequence[str],
    cfg: SummarizeConfig | None = None,
    *,
    save_state: str | Path | None = None,
    progress: Progress | None = None,
    model: LoadedModel | None = None,
) -> AskResult:
    """Answer ``questions`` about ``source``: a book (a path or a ``Book``, streamed through the
    memory now; ``save_state`` keeps the state) or a state file (``is_state_file``: answered
    without reading). ``cfg`` gives the model, memory, adapter, device and decoding settings
    (``words``: each answer's length; ``evidence_tokens`` and ``cast``: the passages and names
    before each question, as in the summary; the strategy and instruction are not used); pass
    ``model`` to reuse a loaded one. ConfigError for no question or a blank one, or ``save_state`` with a
    state file; CheckpointError for a state from another model, adapter or memory settings.
    """
    from .engine import InfiniReader, check_identity, identity, load_state
    from .engine import save_state as write_state
    from .evidence import Evidence, book_evidence, evidence_budget, name_tokens
    from .pipeline import Summarizer

    cfg = cfg or SummarizeConfig()
    questions = [q.strip() for q in questions]
    if not questions:
        raise ConfigError('no question to answer: give one, e.g. infsum ask BOOK "Who is the narrator?"')
    for i, q in enumerate(questions, 1):
        if not q:
            raise ConfigError(f"question {i} is empty: write the question, or leave it out")
    from_state = is_state_file(source)
    if from_state and save_state is not None:
        raise ConfigError(f"{source} is already a saved state: --save-state is for a book")
    report = progress or ignore
    seconds: dict[str, float] = {}
    book = state = None
    t0 = time.perf_counter()
    if from_state:  # a missing or damaged file fails before the model loads
        state = load_state(source)
        seconds["state"] = time.perf_counter() - t0
    else:
        report(Step("read", 0, 1))
        book = source if isinstance(source, Book) else load_book(source, password=cfg.password)
        seconds["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    models = Summarizer(replace(cfg, strategy="infini", instruction=None), model=model)
    loaded = models.loaded(report)
    infini, adapter = models.infini(report)
    seconds["load"] = time.perf_counter() - t0
    tok = loaded.tokenizer
    reader = InfiniReader(infini)
    t0 = time.perf_counter()
    budget = evidence_budget(cfg.evidence_tokens, infini.cfg.segment_len)
    if state is not None:
        check_identity(state, source, model=loaded.name, adapter=adapter)
        if not state.context and (budget or cfg.cast):
            log.info(
                "%s: the state holds no passages or names (an older infsum saved it): "
                "the questions are asked without them",
                source,
            )
        evidence = Evidence.from_context(state.context).within(tok, budget, cfg.cast)
        seconds["state"] += time.perf_counter() - t0
        title = state.identity.get("title")
    else:
        ids, starts = book_tokens(tok, book)
        state = reader.read(
            ids, progress=lambda d, n: report(Step("stream", d, n, chapter_at(starts, max(d - 1, 0))))
        )
        chapters = (c.text for c in book.chapters)
        evidence = book_evidence(tok, book.text, chapters, evidence_tokens=budget, cast=cfg.cast)
        if save_state is not None:
            ident = identity(loaded.name, adapter, book)
            write_state(state, save_state, identity=ident, context=evidence.context())
        seconds["stream"] = time.perf_counter() - t0
        title = book.title
    gen = replace(cfg.generation, max_new_tokens=max_new_tokens(cfg.words), min_new_tokens=0)
    spared = name_tokens(tok, evidence.names[: gen.spare_names])  # the names a question is asked with
    answers = []
    t_all = time.perf_counter()
    for i, question in enumerate(questions):
        report(Step("answer", i, len(questions), question))
        t0 = time.perf_counter()
        closing = chat_prompt(tok, evidence.ask(question)).closing
        out = reader.generate(state, closing, gen, tok.eos_ids, spared=spared)
        text = trim_to_sentence(tok.decode(out, skip_special=True))
        answers.append(Answer(question, text, len(out), round(time.perf_counter() - t0, 3)))
    report(Step("answer", len(questions), len(questions)))
    seconds["answer"] = time.perf_counter() - t_all
    return AskResult(
        answers=tuple(answers),
        input=str(source.source if isinstance(source, Book) else source),
        title=title,
        model=loaded.name,
        adapter=str(adapter) if adapter else None,
        tokens=state.n_read,
        from_state=from_state,
        state=str(source) if from_state else (str(save_state) if save_state is not None else None),
        segment_len=state.segment_len,
        generation=asdict(gen),
        dtype=str(loaded.dtype).removeprefix("torch."),
        evidence_tokens=evidence.evidence_tokens,
        cast=evidence.cast,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
