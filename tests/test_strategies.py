"""Strategies: lead, TextRank, the registry, and the model strategies' budgets."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import replace

import numpy as np
import pytest
import torch

from infsum import strategies
from infsum.config import GenerationConfig
from infsum.errors import ConfigError
from infsum.extractive import lead, pagerank, textrank
from infsum.prompt import CHUNK_INSTRUCTION, INSTRUCTION, max_new_tokens
from infsum.sentences import split_sentences
from infsum.strategies import STRATEGIES, Job, WindowSummarizer, get_strategy

CENTRAL = "The old dragon guarded the golden treasure in the mountain cave."
STORY = "\n\n".join(
    [
        "Bread rises slowly in a warm kitchen every morning.",
        "The dragon slept in the mountain cave all winter long.",
        CENTRAL,
        "Brave knights came to steal the golden treasure.",
        "The old dragon frightened the villagers below.",
        "The mountain cave was cold and very dark inside.",
        "Rain fell on distant fields of barley and oats.",
    ]
)


class FakeBook:
    """Just the part of ``Book`` the strategies read."""

    def __init__(self, text: str) -> None:
        self.text = text


def test_lead_takes_exactly_the_first_words_in_order() -> None:
    text = "one two\nthree\n\nfour  five six seven"
    assert lead(text, 5) == "one two three four five"
    assert lead(text, 100) == "one two three four five six seven"


def test_split_sentences_joins_wrapped_lines_and_splits_paragraphs() -> None:
    text = 'He said "Go." Then\nhe left! "Why?" said she.\n\nNew paragraph here'
    assert split_sentences(text) == [
        'He said "Go."',
        "Then he left!",
        '"Why?" said she.',
        "New paragraph here",
    ]


def test_textrank_picks_the_central_sentence() -> None:
    assert textrank(STORY, len(CENTRAL.split())) == CENTRAL


def test_textrank_respects_budget_keeps_document_order_and_is_deterministic() -> None:
    sentences = split_sentences(STORY)
    for budget in (5, 12, 20, 30, 45):
        out = textrank(STORY, budget)
        assert len(out.split()) <= budget
        picked = [s for s in sentences if s in out]
        assert " ".join(picked) == out  # whole sentences, in the order of the document
        assert textrank(STORY, budget) == out
    assert CENTRAL in textrank(STORY, 30)
    assert "Bread rises" not in textrank(STORY, 30)  # the unconnected sentences rank last


def test_pagerank_is_a_distribution_and_favours_the_hub() -> None:
    star = np.zeros((4, 4))
    star[0, 1:] = star[1:, 0] = 1.0  # node 0 is linked to everyone, the others only to it
    ranks = pagerank(star)
    assert ranks.sum() == pytest.approx(1.0)
    assert ranks.argmax() == 0
    assert ranks[1] == pytest.approx(ranks[3])


def test_pagerank_matches_the_transition_matrix_power_iteration() -> None:
    rng = np.random.default_rng(0)
    sim = rng.random((40, 40)) * (rng.random((40, 40)) < 0.2)
    sim = np.triu(sim, 1) + np.triu(sim, 1).T
    sim[7, :] = sim[:, 7] = 0.0  # an isolated sentence: its rank is spread uniformly
    out = sim.sum(axis=1)
    trans = np.divide(sim, out[:, None], out=np.zeros_like(sim), where=out[:, None] > 0)
    rank = np.full(40, 1 / 40)
    for _ in range(200):  # the textbook iteration with the row-normalised matrix written out
        rank = 0.85 * (rank @ trans + rank[out == 0].sum() / 40) + 0.15 / 40
    np.testing.assert_allclose(pagerank(sim), rank, rtol=1e-7)
    assert np.array_equal(np.argsort(-pagerank(sim), kind="stable"), np.argsort(-rank, kind="stable"))


def test_the_registry_runs_extractive_strategies_without_a_model() -> None:
    book = FakeBook(STORY)
    assert STRATEGIES["lead"].run(Job(book, 3)).summary == "Bread rises slowly"
    assert STRATEGIES["textrank"].run(Job(book, len(CENTRAL.split()))).summary == CENTRAL
    assert [s.name for s in STRATEGIES.values() if not s.needs_model] == ["lead", "textrank"]


def test_an_unknown_strategy_names_every_choice() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'nope'; use one of: infini, lead, textrank"):
        get_strategy("nope")
    assert [s.name for s in STRATEGIES.values() if s.memory] == ["infini"]  # the one with a memory


# ---------------------------------------------------------------- model strategies (tiny random model)

GREEDY_PLAIN = GenerationConfig(repetition_penalty=1.0, no_repeat_ngram=0)
PROSE = " ".join(f"Sentence number {k} tells how the robot crossed river {k % 7}." for k in range(300))


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    """The tiny random Llama, loaded on the CPU."""
    from infsum.models import load_model

    torch.set_num_threads(2)
    return load_model(str(tiny_model_dir), device="cpu")


def small_window(loaded, window: int):
    """A copy of ``loaded`` whose model claims a ``window``-token context (same weights)."""
    model = copy.deepcopy(loaded.model)
    model.config.max_position_embeddings = window
    return dataclasses.replace(loaded, model=model)


def record_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], str, int]]:
    """Record every (text ids, instruction, words) that WindowSummarizer.summarize is given."""
    calls: list[tuple[list[int], str, int]] = []
    original = WindowSummarizer.summarize

    def spy(self, text_ids, instruction, words, on_token=None):
        calls.append((list(text_ids), instruction, words))
        return original(self, text_ids, instruction, words, on_token)

    monkeypatch.setattr(WindowSummarizer, "summarize", spy)
    return calls


def test_window_summarizer_is_the_base_model_with_ordinary_attention(tiny_loaded) -> None:
    model = WindowSummarizer(tiny_loaded, replace(GREEDY_PLAIN, max_new_tokens=16))
    prompt = model.prompt_ids(model.tok.encode(PROSE[:2000]), "Summarize the plot in about 5 words.")
    ours = model.reader.generate(None, prompt, replace(GREEDY_PLAIN, max_new_tokens=16), ())
    ref = tiny_loaded.model.generate(
        torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert ours == ref[0, len(prompt) :].tolist()


@pytest.mark.parametrize("name", ["truncate-head", "truncate-tail"])
def test_truncate_fits_the_window_and_keeps_the_right_end(tiny_loaded, monkeypatch, name: str) -> None:
    loaded = small_window(tiny_loaded, 400)
    calls = record_calls(monkeypatch)
    steps: list[tuple[int, int]] = []
    job = Job(FakeBook(PROSE), 20, loaded=loaded, progress=lambda s: steps.append((s.done, s.total)))
    out = STRATEGIES[name].run(job).summary
    (ids, instruction, words), book_ids = calls[0], loaded.tokenizer.encode(PROSE)
    assert instruction == INSTRUCTION.format(words=20) and words == 20
    assert ids == (book_ids[-len(ids) :] if name == "truncate-tail" else book_ids[: len(ids)])
    model = WindowSummarizer(loaded, GenerationConfig())
    assert len(model.prompt_ids(ids, instruction)) + max_new_tokens(20) == 400  # the window, filled
    assert isinstance(out, str) and steps and all(t == max_new_tokens(20) and d <= t for d, t in steps)


@pytest.mark.parametrize("name", ["truncate-head", "truncate-tail", "hierarchical"])
def test_window_answers_run_to_half_their_budget_before_they_may_stop(tiny_loaded, name: str) -> None:
    """The window baselines share the infini strategy's minimum answer length: end-of-text is
    masked until half the token budget, so a model that would stop at once writes that much."""
    words = 20
    plain = WindowSummarizer(tiny_loaded, GREEDY_PLAIN)
    text = PROSE[:1500]
    instruction = INSTRUCTION.format(words=words)
    prompt = plain.prompt_ids(plain.tok.encode(text), instruction)
    first = plain.reader.generate(None, prompt, GREEDY_PLAIN, ())[0]
    assert plain.reader.generate(None, prompt, GREEDY_PLAIN, {first}) == []  # plain decoding stops at once
    tok = copy.copy(tiny_loaded.tokenizer)
    tok.eos_ids = frozenset({first})  # the model's first answer token now ends its answer
    loaded = dataclasses.replace(tiny_loaded, tokenizer=tok)
    budget = max_new_tokens(words)
    written: list[int] = []
    model = WindowSummarizer(loaded, GREEDY_PLAIN)
    model.summarize(tok.encode(text), instruction, words, on_token=written.append)
    assert budget // 2 <= len(written) <= budget
    draft = STRATEGIES[name].run(Job(FakeBook(text), words, loaded=loaded, generation=GREEDY_PLAIN))
    assert draft.generation["min_new_tokens"] == budget // 2 and draft.generation["max_new_tokens"] == budget
    assert draft.summary  # not the empty answer the model gives without the rule


def test_hierarchical_covers_the_text_in_chunks_and_reduces_until_it_fits(tiny_loaded, monkeypatch) -> None:
    monkeypatch.setattr(strategies, "CHUNK_SUMMARY_WORDS", 10)  # short chunk summaries: a fast test
    loaded = small_window(tiny_loaded, 300)
    calls = record_calls(monkeypatch)
    steps: list[tuple[int, int]] = []
    job = Job(FakeBook(PROSE), 20, loaded=loaded, progress=lambda s: steps.append((s.done, s.total)))
    STRATEGIES["hierarchical"].run(job)
    model = WindowSummarizer(loaded, GenerationConfig())
    book_ids = model.tok.encode(PROSE)
    firsts = []
    for ids, _, _ in calls:  # the first level: consecutive chunks that rebuild the whole text
        if sum(map(len, firsts)) >= len(book_ids):
            break
        firsts.append(ids)
    assert [t for c in firsts for t in c] == book_ids and len(firsts) > 1
    assert len(calls) > len(firsts) + 1  # chunk summaries did not fit at once: a second level ran
    for ids, instruction, words in calls:
        assert len(model.prompt_ids(ids, instruction)) + max_new_tokens(words) <= 300
    assert calls[-1][1] == INSTRUCTION.format(words=20)
    assert all(c[1] == CHUNK_INSTRUCTION.format(words=10) for c in calls[:-1])
    assert steps[-1] == (len(calls), len(calls))


def test_model_strategies_need_a_model() -> None:
    with pytest.raises(ConfigError, match="runs a model"):
        STRATEGIES["hierarchical"].run(Job(FakeBook(STORY), 10))
