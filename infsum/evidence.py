"""What the summary is written beside, besides the memory: the book's most central passages and its
main characters, placed in the prompt after the whole book has streamed through the memory.

An untrained memory carries little, so the model writes from its local window: without help, the
book's last pages. ``summary_ask`` puts a bounded selection of the book's most central sentences
(TextRank over the whole book, ``infsum.extractive.central_sentences``), in reading order, and the
names the book mentions most (``infsum.names.characters``) into that window, next to the memory of
everything (issue 16; docs/grounding.md has the measurements that chose the defaults). The
selection costs at most ``evidence_tokens`` tokens of the local segment, whatever the book's length.

The same ``Evidence`` closes every question of ``infsum ask``, and a saved state carries it
(``Evidence.context``, ``Evidence.from_context``), so a question asked of the state alone gets the
passages and names it would get with the book.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .extractive import central_sentences
from .names import characters
from .prompt import PART_INSTRUCTION

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

PASSAGES_HEADER = "Key passages from the book, in reading order:"
CAST_LINE = "The names the book mentions most: {names}."
PART_EVIDENCE_TOKENS = 384  # summary parts: each part's central passages, at most (docs/grounding.md)


def central_passages(text: str, tok: Tokenizer, budget_tokens: int) -> list[str]:
    """The book's most central sentences, in reading order, whose tokens (one line each in the
    prompt) sum to at most ``budget_tokens``; [] for a budget of 0 or a text with no long sentence."""
    if budget_tokens <= 0:
        return []
    return central_sentences(text, budget_tokens, length=lambda s: len(tok.encode("\n" + s))) or []


def name_tokens(tok: Tokenizer, names: Iterable[str]) -> list[tuple[int, ...]]:
    """``names`` as the model writes them, mid-sentence (" Kayle") and at a line's start ("Kayle"),
    as token ids: the sequences whose continuations the repetition rules spare
    (``GenerationConfig.spare_names``)."""
    return [tuple(tok.encode(form)) for name in names for form in (" " + name, name)]


def summary_ask(instruction: str, passages: Sequence[str] = (), cast: Sequence[str] = ()) -> str:
    """The ask that closes the user turn after the book: the passages (one per line, under a
    header), the main characters, then the instruction; only the instruction when both are empty."""
    parts = []
    if passages:
        parts.append(PASSAGES_HEADER + "".join("\n" + p for p in passages))
    if cast:
        parts.append(CAST_LINE.format(names=_join_names(cast)))
    parts.append(instruction)
    return "\n\n".join(parts)


def evidence_budget(evidence_tokens: int, segment_len: int) -> int:
    """The evidence tokens a prompt gets: at most half a segment, so that the passages, the
    instruction and the start of the answer share the local segment the answer is written in."""
    return min(evidence_tokens, segment_len // 2)


@dataclass(frozen=True)
class Evidence:
    """A book's central passages (in reading order) and its most mentioned names, picked under a
    budget of ``evidence_tokens`` tokens and ``cast`` names: what closes the user turn before the
    instruction or question (``ask``)."""

    passages: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    evidence_tokens: int = 0
    cast: int = 0

    def ask(self, instruction: str) -> str:
        """The ask closing the user turn: the passages, the names, then ``instruction``."""
        return summary_ask(instruction, self.passages, self.names)

    def part_ask(self, words: int) -> str:
        """The ask closing the user turn after one share of the book, for a part of ``words`` words:
        the passages, the names, then ``PART_INSTRUCTION``."""
        return self.ask(PART_INSTRUCTION.format(words=words))

    def within(self, tok: Tokenizer, evidence_tokens: int, cast: int) -> Evidence:
        """This evidence held to a smaller budget: the leading passages (reading order) whose
        tokens (counted as ``central_passages`` counts them) fit ``evidence_tokens``, and the first
        ``cast`` names. A larger budget keeps everything: the passages a larger budget would have
        picked are not here to add. Not always the passages the book would give at the smaller
        budget (``central_passages`` then picks the most central that fit), but a subset of these."""
        if evidence_tokens >= self.evidence_tokens and cast >= self.cast:
            return self
        kept, used = [], 0
        for p in self.passages:
            used += len(tok.encode("\n" + p))
            if used > evidence_tokens:
                break
            kept.append(p)
        budget, names = min(evidence_tokens, self.evidence_tokens), min(cast, self.cast)
        return Evidence(tuple(kept), self.names[:names], budget, names)

    def context(self) -> dict[str, Any]:
        """As a saved state carries it (``engine.save_state(..., context=)``): plain JSON values."""
        return {
            "passages": list(self.passages),
            "names": list(self.names),
            "evidence_tokens": self.evidence_tokens,
            "cast": self.cast,
        }

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> Evidence:
        """The evidence a state's ``context`` holds ({}: none, as in a state saved before it was kept)."""
        if not context:
            return cls()
        return cls(
            tuple(context["passages"]),
            tuple(context["names"]),
            int(context["evidence_tokens"]),
            int(context["cast"]),
        )


def book_evidence(
    tok: Tokenizer, text: str, chapters: Iterable[str], *, evidence_tokens: int, cast: int
) -> Evidence:
    """Up to ``evidence_tokens`` tokens of ``text``'s central passages and the ``cast`` names its
    ``chapters`` mention most."""
    names = characters(chapters)[:cast] if cast else []
    return Evidence(tuple(central_passages(text, tok, evidence_tokens)), tuple(names), evidence_tokens, cast)


def part_evidence(
    tok: Tokenizer, share: str, *, evidence_tokens: int, cast: int, segment_len: int
) -> Evidence:
    """What one part of a summary written in parts is written beside (``infsum BOOK``'s default, and
    training's part examples, so they cannot drift apart): the share's central passages (at most
    ``PART_EVIDENCE_TOKENS``, ``evidence_tokens`` and half a segment) and the ``cast`` names it
    mentions most; ``Evidence.part_ask`` closes the turn with it."""
    budget = evidence_budget(min(evidence_tokens, PART_EVIDENCE_TOKENS), segment_len)
    return book_evidence(tok, share, [share], evidence_tokens=budget, cast=cast)


def _join_names(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
