"""Where a summary comes from: the place in the book of each summary sentence, and their histogram
by tenths of the book.

The book is cut into passages of ``PASSAGE_WORDS`` whitespace-separated words, each starting half a
passage after the one before, so that any sentence of up to half a passage lies whole in one of
them. Every passage gets a TF-IDF vector (the terms of ``infsum.extractive``, Porter-stemmed, so
"walked" meets "walks", and the pairs of consecutive ones, so that a sentence's own wording
outweighs a passage that merely repeats its names; the IDF over the book's passages), computed once
per book: ``PassageIndex`` then places any number of summaries, each sentence (``infsum.sentences``)
at the passage of highest cosine similarity. A sentence's position is the middle of the half of that
passage it matches better, as a share (0..1) of the book's words (so within a quarter passage of
where it lies, for a sentence in one half); a sentence whose best cosine is under ``MIN_SCORE``
matches nothing and is counted as unmatched, not placed. A summary written from the book's last
pages shows it at once: its sentences pile up in the last tenth.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .extractive import content_words, idf, tfidf
from .sentences import split_sentences

# words in a passage; passages start every PASSAGE_WORDS // 2 words. On the shared data's reference
# summaries (10 novels, 25 SQuALITY stories) 200 words keep the references' sentences in the
# book's order better than 100 (mean Spearman 0.74 against 0.66), with positions still finer than
# a tenth of a 5,000-word story
PASSAGE_WORDS = 200
# the cosine under which a sentence is unmatched; of those references' sentences, 68% reach it in
# their own book and 7% in the next book of the list (at 0.035: 77% and 12%)
MIN_SCORE = 0.04
BINS = 10  # the histogram's bins: tenths of the book


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer  # what rouge-score stems with; a dependency of it

    return PorterStemmer()


@lru_cache(maxsize=2**16)
def _stem(word: str) -> str:
    return _stemmer().stem(word)


def _terms(text: str) -> Counter[str]:
    """Stemmed content words of ``text`` and the pairs of consecutive ones, with their counts."""
    stems = [_stem(w) for w in content_words(text)]
    return Counter(stems) + Counter(f"{a} {b}" for a, b in zip(stems, stems[1:], strict=False))


def _dot(a: dict[str, float], b: dict[str, float]) -> float:
    return sum(v * b.get(t, 0.0) for t, v in a.items())


def tenth(position: float) -> int:
    """The histogram bin (0..9) of a position in 0..1; the end of the book (1.0) is in the last."""
    return min(int(position * BINS), BINS - 1)


@dataclass(frozen=True)
class SentenceMatch:
    """One summary sentence, the position (0..1 of the book's words) of the middle of its
    best-matching passage, None when it is unmatched, and the cosine similarity with that passage."""

    text: str
    position: float | None
    score: float


@dataclass(frozen=True)
class Coverage:
    """Where a summary's sentences come from in the book.

    ``histogram`` counts the matched sentences in each tenth of the book (counts, not shares: they
    sum to ``matched``); ``unmatched`` sentences score under ``MIN_SCORE`` with every passage.
    """

    sentences: tuple[SentenceMatch, ...]
    histogram: tuple[int, ...]

    @property
    def matched(self) -> int:
        """Sentences placed in the book."""
        return sum(self.histogram)

    @property
    def unmatched(self) -> int:
        """Sentences that match no passage."""
        return len(self.sentences) - self.matched

    @property
    def shares(self) -> tuple[float, ...]:
        """The histogram as shares of all the summary's sentences, unmatched ones included (so they
        sum to the matched share); zeros for a summary without sentences."""
        n = len(self.sentences)
        return tuple(c / n if n else 0.0 for c in self.histogram)

    @property
    def last_tenth(self) -> float:
        """The share of the summary's sentences matched in the book's last tenth."""
        return self.shares[-1]

    def to_dict(self) -> dict:
        """``{sentences, matched, unmatched, histogram, shares, last_tenth, matches: [{position,
        score}]}``, the matches in the summary's sentence order (position null: unmatched)."""
        return {
            "sentences": len(self.sentences),
            "matched": self.matched,
            "unmatched": self.unmatched,
            "histogram": list(self.histogram),
            "shares": [round(s, 4) for s in self.shares],
            "last_tenth": round(self.last_tenth, 4),
            "matches": [
                {"position": None if m.position is None else round(m.position, 4), "score": round(m.score, 4)}
                for m in self.sentences
            ],
        }


class PassageIndex:
    """A book's passages as TF-IDF vectors, built once, to place the sentences of any number of
    summaries (``coverage``): passages of ``passage_words`` words (at least 2), a sentence under
    ``min_score`` unmatched."""

    def __init__(self, book_text: str, *, passage_words: int = PASSAGE_WORDS, min_score: float = MIN_SCORE):
        if passage_words < 2:
            raise ValueError(f"passage_words must be at least 2, not {passage_words}")
        self.min_score = min_score
        words = book_text.split()
        half = passage_words // 2
        # the book in halves of a passage, each tokenised once; passage k is halves k and k + 1
        self._halves = [_terms(" ".join(words[i : i + half])) for i in range(0, len(words), half)]
        self._half_middles = np.array(
            [(i + min(half, len(words) - i) / 2) / len(words) for i in range(0, len(words), half)]
        )
        bags = [a + b for a, b in zip(self._halves, self._halves[1:], strict=False)] or self._halves
        self.idf = idf(bags)
        self.unknown = math.log(len(bags) + 1)  # a term the book never uses weighs as the rarest
        # the passage vectors by term (compressed sparse columns): term i's passages and weights are
        # _passages[_starts[i]:_starts[i + 1]] and _weights[...]
        self._vocab = {t: i for i, t in enumerate(self.idf)}
        cols, rows, vals = [], [], []
        for k, bag in enumerate(bags):
            for t, v in tfidf(bag, self.idf).items():
                cols.append(self._vocab[t])
                rows.append(k)
                vals.append(v)
        terms = np.array(cols, dtype=np.int64)
        order = np.argsort(terms, kind="stable")
        self._passages = np.array(rows, dtype=np.int64)[order]
        self._weights = np.array(vals, dtype=np.float64)[order]
        self._starts = np.searchsorted(terms[order], np.arange(len(self._vocab) + 1))
        self._n = len(bags)

    def match(self, sentence: str) -> SentenceMatch:
        """``sentence`` placed at its best-matching passage (the first of equals), at the middle of
        the passage's half it matches better (the first of equals), or unmatched."""
        query = tfidf(_terms(sentence), self.idf, self.unknown)
        scores = np.zeros(self._n)
        for t, q in query.items():
            if (i := self._vocab.get(t)) is not None:
                lo, hi = self._starts[i], self._starts[i + 1]
                scores[self._passages[lo:hi]] += q * self._weights[lo:hi]
        best = int(np.argmax(scores)) if self._n else 0
        score = float(scores[best]) if self._n else 0.0
        if score < self.min_score:
            return SentenceMatch(sentence, None, score)
        halves = range(best, min(best + 2, len(self._halves)))
        side = max(halves, key=lambda h: _dot(query, tfidf(self._halves[h], self.idf)))  # first of equals
        return SentenceMatch(sentence, float(self._half_middles[side]), score)

    def coverage(self, summary: str) -> Coverage:
        """Each sentence of ``summary`` placed in the book, and the histogram by tenths."""
        matches = tuple(self.match(s) for s in split_sentences(summary))
        counts = Counter(tenth(m.position) for m in matches if m.position is not None)
        return Coverage(matches, tuple(counts[b] for b in range(BINS)))


def summary_coverage(summary: str, book_text: str) -> Coverage:
    """Where the sentences of ``summary`` come from in ``book_text`` (one summary; for several
    against the same book, build one ``PassageIndex``)."""
    return PassageIndex(book_text).coverage(summary)
