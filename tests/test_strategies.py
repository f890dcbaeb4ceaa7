"""Strategies: lead, TextRank, the run_strategy entry point, and the model strategies' budgets."""

from __future__ import annotations

import numpy as np
import pytest

from infsum.errors import ConfigError
from infsum.strategies import STRATEGIES, lead, pagerank, run_strategy, split_sentences, textrank

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
    text = 'He said "Go." Then\nhe left!\n\nNew paragraph here'
    assert split_sentences(text) == ['He said "Go."', "Then he left!", "New paragraph here"]


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


def test_run_strategy_dispatches_extractive_strategies() -> None:
    book = FakeBook(STORY)
    assert run_strategy("lead", book, words=3) == "Bread rises slowly"
    assert run_strategy("textrank", book, words=len(CENTRAL.split())) == CENTRAL


def test_run_strategy_rejects_an_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        run_strategy("nope", FakeBook(STORY), words=10)
    assert "infini" not in STRATEGIES  # that one lives in the pipeline
