"""Non-Infini summarizers: lead, TextRank, truncated-context and hierarchical model summaries.

``run_strategy(name, book, ...)`` is the one entry point (the CLI's ``--strategy`` and
``bench/quality.py`` use it). ``lead`` and ``textrank`` are extractive and need no model;
``truncate-head``, ``truncate-tail`` and ``hierarchical`` run the same base model with ordinary
attention (the engine with memory off, one segment) on what fits its context window.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .config import GenerationConfig
from .errors import ConfigError
from .prompt import CHUNK_INSTRUCTION, INSTRUCTION, chat_prompt, max_new_tokens
from .sentences import split_sentences

if TYPE_CHECKING:
    from .models import LoadedModel
    from .readers import Book

STRATEGIES = ("lead", "textrank", "truncate-head", "truncate-tail", "hierarchical")
MODEL_STRATEGIES = ("truncate-head", "truncate-tail", "hierarchical")
CHUNK_TOKENS = 1500  # hierarchical: book tokens per first-level chunk, and the most per later group
CHUNK_SUMMARY_WORDS = 120  # hierarchical: length asked of every chunk (and group) summary

Progress = Callable[[int, int], None]


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


def _tfidf_postings(sentences: list[str]) -> tuple[list[dict[int, float]], int]:
    """One sparse L2-normalised TF-IDF vector ``{term id: weight}`` per sentence, and the vocab size."""
    bags = [Counter(w for w in _WORD.findall(s.lower()) if w not in _STOPWORDS) for s in sentences]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    vocab = {t: i for i, t in enumerate(df)}
    n = len(sentences)
    vectors = []
    for bag in bags:
        vec = {vocab[t]: (1 + math.log(c)) * math.log(n / df[t] + 1) for t, c in bag.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vectors.append({t: v / norm for t, v in vec.items()})
    return vectors, len(vocab)


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
    """PageRank scores (summing to 1) of the weighted undirected graph ``sim``, by power iteration."""
    n = sim.shape[0]
    out_weight = sim.sum(axis=1)
    dangling = out_weight == 0  # isolated sentences spread their rank uniformly
    trans = np.divide(sim, out_weight[:, None], out=np.zeros_like(sim), where=~dangling[:, None])
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        new = damping * (rank @ trans + rank[dangling].sum() / n) + (1 - damping) / n
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


def textrank(text: str, words: int) -> str:
    """Extractive summary of at most ``words`` words: the highest-PageRank sentences of a TF-IDF
    cosine graph (damping 0.85), in document order. Sentences that would overflow the budget are
    skipped in favour of the next-ranked ones that fit."""
    sentences = split_sentences(text)
    lengths = [len(s.split()) for s in sentences]
    candidates = [i for i, k in enumerate(lengths) if k >= MIN_SENTENCE_WORDS]
    if not candidates:
        return lead(text, words)
    chosen, used = [], 0
    for i in _rank_sentences(sentences, candidates):
        if used + lengths[i] <= words:
            chosen.append(i)
            used += lengths[i]
        if words - used < MIN_SENTENCE_WORDS:
            break
    return " ".join(sentences[i] for i in sorted(chosen))


# ---------------------------------------------------------------- model strategies


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
        self.reader = InfiniReader(InfiniModel(loaded.model, cfg))
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

    def summarize(
        self,
        text_ids: list[int],
        instruction: str,
        words: int,
        on_token: Callable[[int], None] | None = None,
    ) -> str:
        """The model's answer to ``instruction`` about ``text_ids`` (which must fit the budget)."""
        gen = replace(self.gen, max_new_tokens=max_new_tokens(words))
        prompt = self.prompt_ids(text_ids, instruction)
        assert len(prompt) + gen.max_new_tokens <= self.window, "prompt and answer must fit the window"
        out = self.reader.generate(None, prompt, gen, self.tok.eos_ids, on_token=on_token)
        return self.tok.decode(out, skip_special=True).strip()


def truncate(
    model: WindowSummarizer, text: str, words: int, *, tail: bool, progress: Progress | None = None
) -> str:
    """Summary from as much of ``text`` as fits the context window: its first (head) or last
    (tail) tokens. ``progress`` counts generated tokens."""
    instruction = INSTRUCTION.format(words=words)
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


def hierarchical(model: WindowSummarizer, text: str, words: int, *, progress: Progress | None = None) -> str:
    """Map-reduce summary: fixed chunks of ``CHUNK_TOKENS`` (fewer in a small window) summarized,
    then groups of those summaries summarized, until they fit the window beside the final prompt.
    ``progress`` counts model calls (the total grows as levels are added)."""
    final = INSTRUCTION.format(words=words)
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


# ---------------------------------------------------------------- entry point


def run_strategy(
    name: str,
    book: Book,
    *,
    words: int,
    loaded: LoadedModel | None = None,
    gen: GenerationConfig | None = None,
    progress: Progress | None = None,
) -> str:
    """Summarize ``book`` in about ``words`` words with the strategy ``name`` (one of
    ``STRATEGIES``). Model strategies need ``loaded``; ``gen`` defaults to ``GenerationConfig()``."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; use one of: {', '.join(STRATEGIES)}")
    if words < 1:
        raise ConfigError(f"summary length {words} words is too small; give --words 1 or more")
    if name == "lead":
        return lead(book.text, words)
    if name == "textrank":
        return textrank(book.text, words)
    if loaded is None:
        raise ConfigError(f"strategy {name!r} runs a model: pass loaded=load_model(...)")
    model = WindowSummarizer(loaded, gen or GenerationConfig())
    if name == "hierarchical":
        return hierarchical(model, book.text, words, progress=progress)
    return truncate(model, book.text, words, tail=name == "truncate-tail", progress=progress)
