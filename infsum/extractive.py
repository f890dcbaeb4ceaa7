"""Extractive summaries, which need no model: the book's first words (lead) and TextRank.

Both are baselines for the Infini summary (``infsum.strategies`` registers them as ``lead`` and
``textrank``); TextRank ranks the book's sentences by PageRank over their TF-IDF cosine graph. The
TF-IDF pieces (``content_words``, ``idf``, ``tfidf``) also place a summary's sentences in the book
(``infsum.coverage``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .sentences import split_sentences

# ---------------------------------------------------------------- lead


def lead(text: str, words: int) -> str:
    """The first ``words`` whitespace-separated words of ``text``, joined by single spaces."""
    return " ".join(text.split()[:words])


# ---------------------------------------------------------------- textrank

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves said says say one upon shall may
    might must"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
DAMPING = 0.85
MAX_GRAPH_SENTENCES = 2000  # the graph is dense (n x n): above this, pre-select by weighted degree
MIN_SENTENCE_WORDS = 8  # shorter sentences (headings, dialogue tags, "Yes.") are never picked


def content_words(text: str) -> list[str]:
    """The words of ``text`` that TF-IDF weighs, in order: lower-cased runs of letters and digits
    (an inner apostrophe kept), stopwords left out."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def idf(bags: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Inverse document frequency ``log(n / df + 1)`` of every term of ``bags`` (``n`` documents),
    in order of first appearance."""
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    n = len(bags)
    return {t: math.log(n / d + 1) for t, d in df.items()}


def tfidf(
    bag: Mapping[str, int], weights: Mapping[str, float], unknown: float | None = None
) -> dict[str, float]:
    """The L2-normalised TF-IDF vector ``{term: (1 + log tf) * idf}`` of ``bag``; a term missing from
    ``weights`` gets ``unknown``, or is left out when that is None."""
    vec = {t: (1 + math.log(c)) * w for t, c in bag.items() if (w := weights.get(t, unknown)) is not None}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {t: v / norm for t, v in vec.items()}


def _tfidf_postings(sentences: list[str]) -> tuple[list[dict[int, float]], int]:
    """One sparse L2-normalised TF-IDF vector ``{term id: weight}`` per sentence, and the vocab size."""
    bags = [Counter(content_words(s)) for s in sentences]
    weights = idf(bags)
    vocab = {t: i for i, t in enumerate(weights)}
    return [{vocab[t]: v for t, v in tfidf(bag, weights).items()} for bag in bags], len(vocab)


def _cosine_matrix(vectors: list[dict[int, float]]) -> np.ndarray:
    """Dense (n, n) cosine similarity of sparse unit vectors, diagonal zeroed, via term postings."""
    postings: dict[int, list[tuple[int, float]]] = {}
    for i, vec in enumerate(vectors):
        for t, w in vec.items():
            postings.setdefault(t, []).append((i, w))
    n = len(vectors)
    sim = np.zeros((n, n), dtype=np.float64)
    for plist in postings.values():
        if len(plist) < 2:  # a term in one sentence links nothing
            continue
        idx = np.fromiter((i for i, _ in plist), dtype=np.int64, count=len(plist))
        w = np.fromiter((x for _, x in plist), dtype=np.float64, count=len(plist))
        sim[np.ix_(idx, idx)] += np.outer(w, w)  # no repeated index inside one posting list
    np.fill_diagonal(sim, 0.0)
    return sim


def pagerank(
    sim: np.ndarray, *, damping: float = DAMPING, tol: float = 1e-8, max_iter: int = 200
) -> np.ndarray:
    """PageRank scores (summing to 1) of the weighted undirected graph ``sim``, by power iteration.

    A step is ``rank @ T`` with T = sim divided row by row by its out-weight, computed as ``(rank /
    out-weight) @ sim``: the same sums without a second n x n matrix (32 MB at the 2,000 sentences a
    graph holds at most, the larger part of a summary part's evidence on a long book)."""
    n = sim.shape[0]
    out_weight = sim.sum(axis=1)
    dangling = out_weight == 0  # isolated sentences spread their rank uniformly
    share = np.divide(1.0, out_weight, out=np.zeros_like(out_weight), where=~dangling)
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        new = damping * ((rank * share) @ sim + rank[dangling].sum() / n) + (1 - damping) / n
        if np.abs(new - rank).sum() < tol:
            return new
        rank = new
    return rank


def _rank_sentences(sentences: list[str], candidates: list[int]) -> list[int]:
    """Candidate indices ordered best first by PageRank over their TF-IDF cosine graph."""
    vectors, vocab_size = _tfidf_postings([sentences[i] for i in candidates])
    if len(candidates) > MAX_GRAPH_SENTENCES:
        # weighted degree in a cosine graph is x_i . sum_j x_j: one pass, no n x n matrix
        total = np.zeros(vocab_size)
        for vec in vectors:
            for t, w in vec.items():
                total[t] += w
        degree = np.array([sum(w * total[t] for t, w in vec.items()) for vec in vectors])
        keep = np.sort(np.argsort(-degree, kind="stable")[:MAX_GRAPH_SENTENCES])
        candidates = [candidates[k] for k in keep]
        vectors = [vectors[k] for k in keep]
    scores = pagerank(_cosine_matrix(vectors))
    order = np.argsort(-scores, kind="stable")  # ties go to the earlier sentence
    return [candidates[k] for k in order]


def central_sentences(
    text: str, budget: int, *, length: Callable[[str], int] = lambda s: len(s.split())
) -> list[str] | None:
    """The highest-PageRank sentences of ``text`` (TF-IDF cosine graph, damping 0.85) whose
    ``length`` (words by default; any cost, such as tokens) sums to at most ``budget``, in document
    order. Sentences that would overflow the budget are skipped in favour of the next-ranked ones
    that fit. Sentences under ``MIN_SENTENCE_WORDS`` words are never picked: None when the text has
    no longer one (a budget too small for any sentence gives [])."""
    sentences = split_sentences(text)
    candidates = [i for i, s in enumerate(sentences) if len(s.split()) >= MIN_SENTENCE_WORDS]
    if not candidates:
        return None
    chosen, used = [], 0
    for i in _rank_sentences(sentences, candidates):
        cost = length(sentences[i])
        if used + cost <= budget:
            chosen.append(i)
            used += cost
        if budget - used < MIN_SENTENCE_WORDS:
            break
    return [sentences[i] for i in sorted(chosen)]


def textrank(text: str, words: int) -> str:
    """Extractive summary of at most ``words`` words: ``central_sentences`` joined by spaces (the
    lead when no sentence is long enough to pick)."""
    chosen = central_sentences(text, words)
    return lead(text, words) if chosen is None else " ".join(chosen)
