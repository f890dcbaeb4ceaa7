"""Recognising chapter-heading lines in plain text (used by the text and PDF readers)."""

from __future__ import annotations

import re

_ROMAN = r"[IVXLC]+"
_NUMBER_WORD = (
    r"(?i:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen"
    r"|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty"
    r"|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last)"
)
_NUMBER = rf"(?:{_ROMAN}|\d{{1,3}}|{_NUMBER_WORD}(?:[- ]{_NUMBER_WORD})?)"
_KEYWORD = r"(?:CHAPTER|Chapter|BOOK|Book|PART|Part|VOLUME|Volume|STAVE|Stave|LETTER|Letter|CANTO|Canto)"

# a line that opens a chapter: "CHAPTER I.", "Chapter 12: The Storm", "BOOK ONE", "XIV", "3.",
# "I. WHY THE PRINCESS HAS A STORY", "12. The Return", "FIRST PART", "Epilogue"
_HEADING = re.compile(
    rf"^(?:{_KEYWORD}\s+{_NUMBER}\b[.:]?(?:\s+\S.*)?"
    rf"|{_NUMBER_WORD}\s+(?:PART|Part|BOOK|Book)"
    rf"|{_ROMAN}\.?(?:\s+[A-Z][^.!?]*)?"
    rf"|[1-9]\d{{0,2}}\.?(?:\s+[A-Z][^.!?]*[^\d\s.!?])?"  # not "3 Title 25": a contents line
    rf"|(?:PROLOGUE|Prologue|EPILOGUE|Epilogue))$"
)
# a grouping heading ("BOOK ONE", "FIRST PART") that is kept as a prefix of the next chapter's title
_GROUP = re.compile(r"\b(?i:book|part|volume)\b")
_THE_END = re.compile(r"^THE END\W*$")
MAX_HEADING_WORDS = 12  # longer lines are prose, whatever they start with


def is_heading(line: str) -> bool:
    """True when ``line`` (stripped) looks like a numbered chapter heading."""
    return len(line.split()) <= MAX_HEADING_WORDS and bool(_HEADING.match(line))


def is_caps_heading(line: str) -> bool:
    """True for a short line in capitals with no sentence punctuation ("THE FERRYMAN")."""
    words = line.split()
    return (
        0 < len(words) <= 8
        and not _THE_END.match(line)
        and line.upper() == line
        and any(c.isalpha() for c in line)
        and not line.rstrip().endswith((",", ";", "!", "?", ":"))
    )


def is_subtitle(line: str) -> bool:
    """True for a short title-like line that follows a bare heading ("Down the Rabbit-Hole")."""
    words = line.split()
    if not 0 < len(words) <= 10 or line.endswith((".", ",", ";", ":")) and not line.isupper():
        return False
    return line.isupper() or words[0][:1].isupper() and sum(w[:1].isupper() for w in words) * 2 >= len(words)


def is_bare(heading: str) -> bool:
    """True for a heading with a number but no title ("CHAPTER IV", "II."), which a subtitle may follow."""
    return len(heading.split()) <= 2 and not is_group(heading)


def is_group(title: str) -> bool:
    """True for a heading that groups chapters (a book or part) rather than opening one."""
    return bool(_GROUP.search(title))
