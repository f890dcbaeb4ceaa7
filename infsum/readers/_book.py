"""The Book and Chapter values every reader returns, and the paragraph helpers they share."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chapter:
    """One chapter: its title and its text as plain paragraphs separated by ``"\\n\\n"``."""

    title: str
    text: str

    @property
    def words(self) -> int:
        """Number of whitespace-separated words in the text."""
        return len(self.text.split())


@dataclass(frozen=True)
class Book:
    """A whole book as read from one file, in reading order."""

    title: str | None
    author: str | None
    language: str | None
    chapters: tuple[Chapter, ...]
    source: str

    @property
    def text(self) -> str:
        """The chapters' texts joined with blank lines, without chapter titles."""
        return "\n\n".join(c.text for c in self.chapters if c.text)

    @property
    def words(self) -> int:
        """Number of whitespace-separated words in all chapters."""
        return sum(c.words for c in self.chapters)

    def to_dict(self) -> dict:
        """``{"title", "author", "language", "words", "chapters": [{"title", "words"}]}``."""
        return {
            "title": self.title,
            "author": self.author,
            "language": self.language,
            "words": self.words,
            "chapters": [{"title": c.title, "words": c.words} for c in self.chapters],
        }


def clean_line(line: str) -> str:
    """Collapse runs of spaces (including non-breaking and thin ones) and strip the ends."""
    return _SPACES.sub(" ", line).strip()


def paragraphs(text: str) -> list[str]:
    """Split text at blank lines into paragraphs, each joined onto one line."""
    out = []
    for block in _BLANK_LINES.split(text):
        para = clean_line(" ".join(block.split("\n")))
        if para:
            out.append(para)
    return out


def join_paragraphs(paras: list[str]) -> str:
    """Join paragraphs with blank lines, the text format of a Chapter."""
    return "\n\n".join(p for p in paras if p)
