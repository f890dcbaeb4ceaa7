"""Names in a book and in its summary: the main characters, and the names a summary invents.

A summary that names people the book never mentions is invented, however fluent. Two checks make
that visible (issue 16): ``characters`` ranks the book's proper names, counted in bounded memory as
the book is read (a Misra-Gries counter: at most ``capacity`` names are held, and a name more frequent
than 1/capacity of all name occurrences is never lost); ``unsupported_names`` lists every name of a
summary (a word capitalised mid-sentence) that occurs nowhere in the book, in any case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# a capitalised word, with inner hyphens or apostrophes ("Mary-Daisy", "O'Brien"); possessive 's dropped
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)*\b")
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")
_JOINER = re.compile("[-']")
_APOSTROPHES = str.maketrans("\u2019\u02bc", "''")  # typographic apostrophes read as ' ("Tr\u2019en")
# a capitalised word here starts a sentence (or a quotation, or a line): it says nothing about a name
_OPENER = "[\"'\u201c\u2018(]"  # a quotation mark or bracket that may open a sentence
_SENTENCE_START = re.compile(rf"(?:^|[.!?:;]\s*{_OPENER}?|\n\s*{_OPENER}?|[\"\u201c\u2018]\s*)$")
_LOOK_BACK = 6  # characters before a word searched for a sentence start
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Mme|Mlle)\.\s*$")  # "Mr. Darcy": the period ends no sentence
# capitalised words that are not names, though they appear mid-sentence
_NOT_NAMES = frozenset(
    """I Mr Mrs Miss Ms Dr Sir Madam Lady Lord Captain Colonel Major General King Queen Prince Princess
    Uncle Aunt Father Mother Saint St God Heaven Chapter Book Part Volume Monday Tuesday Wednesday
    Thursday Friday Saturday Sunday January February March April May June July August September
    October November December English French German Christian Oh Ah Yes No""".split()  # noqa: SIM905
)
CAPACITY = 2000  # names held by the counter at most (bounded memory whatever the book's length)
TOP = 10  # characters reported


class NameCounter:
    """Misra-Gries heavy hitters over the proper names of a text read piece by piece.

    Holds at most ``capacity`` counters. A name's count is under-estimated by at most (names
    seen) / (capacity + 1), so every name above that share of all name occurrences is kept.
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}

    def add(self, names: Iterable[str]) -> None:
        """Count each name in ``names``."""
        for name in names:
            if name in self.counts:
                self.counts[name] += 1
            elif len(self.counts) < self.capacity:
                self.counts[name] = 1
            else:  # no room: every counter pays one, the ones at zero are dropped
                self.counts = {k: c - 1 for k, c in self.counts.items() if c > 1}

    def top(self, n: int = TOP) -> list[str]:
        """The ``n`` most frequent names, most frequent first (ties: the name first seen)."""
        return sorted(self.counts, key=lambda k: -self.counts[k])[:n]


def mid_sentence_names(text: str) -> list[str]:
    """Capitalised words of ``text`` that do not start a sentence and are not titles, days or the
    like: the candidates for proper names, in order."""
    out = []
    for m in _CAPITALISED.finditer(text):
        word = m.group(0).removesuffix("'s")
        lo, hi = max(0, m.start() - _LOOK_BACK), m.start()
        starts = _SENTENCE_START.search(text, lo, hi) and not _TITLE.search(text, lo, hi)
        if word in _NOT_NAMES or starts:
            continue
        out.append(word)
    return out


def characters(chapters: Iterable[str], *, top: int = TOP, capacity: int = CAPACITY) -> list[str]:
    """The ``top`` most frequent proper names over ``chapters`` (texts, in reading order), counted
    in bounded memory."""
    counter = NameCounter(capacity)
    for text in chapters:
        counter.add(mid_sentence_names(text))
    return counter.top(top)


def unsupported_names(summary: str, book_text: str) -> list[str]:
    """Proper names of ``summary`` (capitalised mid-sentence somewhere in it) that occur nowhere in
    ``book_text``, in any case, in order of first appearance: names the summary invented. A word
    capitalised only where a sentence starts ("Meanwhile", "Overwhelmed") is not taken for a name; a
    name the book has only inside a longer word ("Jordan's", "Non-P") is one it mentions, and a
    typographic apostrophe is the same as a straight one. A compound ("Earth-like", "Tom-and-Ada")
    is the book's when its capitalised parts are: only they can be names."""
    known: set[str] = set()
    for word in _WORD.findall(book_text.translate(_APOSTROPHES).lower()):
        known.add(word)
        known.update(_JOINER.split(word))  # "Jordan's", "Non-P": the book mentions Jordan and Non
    out: list[str] = []
    for word in mid_sentence_names(summary.translate(_APOSTROPHES)):
        if not _mentioned(word, known) and word not in out:
            out.append(word)
    return out


def _mentioned(word: str, known: set[str]) -> bool:
    """Whether the book (its words and their parts, lowercased: ``known``) mentions ``word``, whole
    or, for a compound, in each capitalised part."""
    if word.lower() in known:
        return True
    parts = _JOINER.split(word)
    return len(parts) > 1 and all(p.lower() in known for p in parts if p[:1].isupper())
