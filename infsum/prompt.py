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
