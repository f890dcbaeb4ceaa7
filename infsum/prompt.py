"""The prompt: the instructions, the token budgets of an answer, the one layout of a chat user turn
(used by the pipeline, the model strategies, training data and the passkey test alike) and the
trimming of an answer that the budget cut off.

A user turn is the chat template's opening, the body (a book, a passage, a passkey haystack), a
blank line and the ask, the end of the turn and the assistant's opening, and optionally the first
words of the answer. ``chat_prompt`` builds it as two halves so the pipeline can stream the opening
and the book into memory and generate from the closing: training and inference cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError
from .sentences import sentence_ends

if TYPE_CHECKING:
    from .readers import Book
    from .tokenizer import Tokenizer

INSTRUCTION = "Summarize the plot of the book above in about {words} words."
CHUNK_INSTRUCTION = "Summarize the plot of the passage above in about {words} words."
PART_INSTRUCTION = "Summarize what happens in the part of the book above in about {words} words."
CHAPTER_INSTRUCTION = (
    "Write a short note, in about {words} words, on what happens in the part of the book just above."
)
TOKENS_PER_WORD = 1.6  # English prose with the SmolLM2 tokenizer, with room for the model's own pace
MAX_NEW_TOKENS = 2048
MIN_ANSWER_SHARE = 0.5  # of the token budget: see min_new_tokens
_LIST_MARK = re.compile(r"(?:^|\n)[ \t]*\d{1,3}[.)]$")  # a numbered list's next marker, left alone
# an answer's talk about its own length ("The part of the book about 67 words is:"): a count of
# words, then the lead-in's end (a comma or a colon, maybe after "is") before any content
_LENGTH = re.compile(r"\b\d[\d,]*\s+words?\b", re.IGNORECASE)
_LEAD_IN_END = re.compile(r"\s*(?:(?:is|are|was|were)\s*)?[:,]\s*", re.IGNORECASE)
MIN_KEPT_WORDS = 3  # content after a lead-in shorter than this (in words with letters) goes with it


@dataclass(frozen=True)
class ChatPrompt:
    """One user turn as token ids, without its body: ``opening`` goes before the body, ``closing``
    after it (``"\\n\\n"`` + the ask, the end of the turn, the assistant's opening, any answer prefix)."""

    opening: tuple[int, ...]
    closing: tuple[int, ...]

    def around(self, body: Sequence[int]) -> list[int]:
        """The whole prompt with ``body`` inside the user turn."""
        return [*self.opening, *body, *self.closing]


def chat_prompt(tok: Tokenizer, ask: str, *, answer_prefix: str = "") -> ChatPrompt:
    """The user turn that asks ``ask`` about a body placed before it; with ``answer_prefix`` the
    assistant's answer is begun (passkey's "The pass key is") and the model continues it."""
    # the ask is encoded apart from the body, so the body's ids are the same wherever it is cut
    closing = tok.encode("\n\n" + ask) + tok.encode_chat_scaffold(tok.chat_parts()[1])
    if answer_prefix:
        closing += tok.encode(answer_prefix)
    return ChatPrompt(tuple(_opening(tok)), tuple(closing))


def _opening(tok: Tokenizer) -> list[int]:
    """The chat template up to the user's content: the system turn and the user turn's start."""
    return tok.encode_chat_scaffold(tok.chat_parts()[0])


def book_tokens(tok: Tokenizer, book: Book) -> tuple[list[int], list[tuple[int, str]]]:
    """Token ids of the chat's opening and the book's text (the part of the prompt that is
    streamed into memory), and where each chapter starts.

    The text is ``Book.text`` (chapters joined by blank lines), encoded chapter by chapter so that
    every chapter's first token is known exactly. ``chat_prompt(...).closing`` completes the turn.
    """
    ids = _opening(tok)
    starts = []
    first = True
    for chapter in book.chapters:
        if not chapter.text:
            continue
        starts.append((len(ids), chapter.title))
        ids += tok.encode(chapter.text if first else "\n\n" + chapter.text)
        first = False
    return ids, starts


def chapter_at(starts: Sequence[tuple[int, str]], offset: int) -> str | None:
    """Title of the chapter whose tokens cover ``offset``, from ``book_tokens``' (first token,
    title) pairs."""
    current = None
    for start, title in starts:
        if start > offset:
            break
        current = title
    return current


def summary_instruction(words: int, instruction: str | None = None) -> str:
    """The summary instruction for a ``words``-word summary: the user's ``instruction`` or the
    built-in ``INSTRUCTION``, with every ``{words}`` in it replaced by ``words`` (other braces are
    left as they are). Without ``{words}``, the budget still sets the answer's length in tokens."""
    return (INSTRUCTION if instruction is None else instruction).replace("{words}", str(words))


def read_user_text(path: Path, kind: str, what: str) -> str:
    """The UTF-8 text of a file the user gave (``kind``: "instruction", "questions"); ConfigError
    naming the file when it is missing or not UTF-8 text (``what``: what it holds, for the message)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what} ({e}); give a UTF-8 text file") from None


def load_instruction(path: str | Path) -> str:
    """The instruction in a UTF-8 text file (``--instruction-file``), stripped; ConfigError naming
    the file when it is missing, not UTF-8 text or empty (``SummarizeConfig`` checks its length)."""
    p = Path(path)
    text = read_user_text(p, "instruction", "the instruction").strip()
    if not text:
        raise ConfigError(f"{p}: the instruction file is empty; write the instruction in it")
    return text


def max_new_tokens(words: int) -> int:
    """Generation budget for a summary of about ``words`` words."""
    return min(math.ceil(words * TOKENS_PER_WORD), MAX_NEW_TOKENS)


def min_new_tokens(budget: int) -> int:
    """The fewest tokens the summary may have, ``MIN_ANSWER_SHARE`` of its ``budget``: small models
    otherwise answer some books with one sentence and stop."""
    return math.floor(budget * MIN_ANSWER_SHARE)


def trim_to_sentence(text: str) -> str:
    """Drop a last sentence that the token budget cut off mid-way (when at least half the text is
    kept); a text that ends a sentence, or has no sentence end at all, is only stripped."""
    text = text.strip()
    ends = sentence_ends(text)
    if ends and ends[-1] < len(text) and ends[-1] >= len(text) // 2:
        return text[: ends[-1]]
    return text


def drop_length_talk(text: str) -> str:
    """``text`` without the sentences in which an answer talks about its own length: small models
    asked for "about N words" echo it ("The part of the book about 67 words is:", "The book ends
    with a summary of the events in 67 words"). A sentence with a count of words loses its lead-in
    up to the comma or colon after the count when at least ``MIN_KEPT_WORDS`` words follow ("In
    the part of the book about 68 words, Retief is sent..." keeps "Retief is sent..."), and is
    dropped otherwise. Lines without a count are left exactly as they are; applying it twice
    changes nothing."""
    if not _LENGTH.search(text):
        return text
    lines = []
    for line in text.split("\n"):
        if not _LENGTH.search(line):
            lines.append(line)
            continue
        kept, start = [], 0
        for end in [*sentence_ends(line), len(line)]:
            if sentence := _without_length_talk(line[start:end].strip()):
                kept.append(sentence)
            start = end
        if kept:  # a line left empty goes, so no paragraph break appears where there was none
            lines.append(" ".join(kept))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _without_length_talk(sentence: str) -> str:
    """One sentence with its length-talk lead-ins removed, or "" when nothing else is left."""
    while m := _LENGTH.search(sentence):
        lead = _LEAD_IN_END.match(sentence, m.end())
        rest = sentence[lead.end() :] if lead else ""
        if sum(any(c.isalpha() for c in w) for w in rest.split()) < MIN_KEPT_WORDS:
            return ""
        sentence = rest[0].upper() + rest[1:]
    return sentence


def clean_summary(text: str, words: int) -> str:
    """A model's summary as infsum returns it: a last sentence cut off mid-way dropped, held to
    ``words`` words at a sentence end, and its talk about its own length dropped last (so a summary
    cleaned again is unchanged)."""
    return drop_length_talk(trim_to_words(trim_to_sentence(text), words))


def trim_to_words(text: str, words: int) -> str:
    """At most ``words`` words of ``text``, cut at a sentence end: the model's pace varies (SmolLM2
    writes about 1.3 tokens a word, the budget allows 1.6), so an answer asked for "about N words"
    is held to N. A text within the budget is returned as it is; one whose first sentence is
    already longer keeps that sentence. A numbered list's marker left at the end is dropped."""
    if len(text.split()) <= words:
        return text
    ends = sentence_ends(text)
    fit = [e for e in ends if len(text[:e].split()) <= words]
    cut = fit[-1] if fit else (ends[0] if ends else len(text))
    return _LIST_MARK.sub("", text[:cut]).rstrip()
