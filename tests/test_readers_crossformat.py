"""The same book read from different formats gives nearly the same words (issue 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from infsum.readers import load_book

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PAIRS = {
    "the-time-machine": "epub/se_h-g-wells_the-time-machine.epub",
    "the-call-of-the-wild": "epub/se_jack-london_the-call-of-the-wild.epub",
    "alices-adventures-in-wonderland": "pdf/gitenberg_alice_11-pdf_word.pdf",
}


def rouge1(target: str, prediction: str) -> tuple[float, float]:
    """ROUGE-1 (recall, precision) of ``prediction`` against ``target``, Porter stemming on."""
    score = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(target, prediction)["rouge1"]
    return score.recall, score.precision


@pytest.mark.shared
@pytest.mark.parametrize(("slug", "other"), sorted(PAIRS.items()))
def test_gutenberg_text_and_other_format_agree(shared_dir: Path, slug: str, other: str) -> None:
    data = shared_dir / "data"
    text = load_book(data / "books" / slug / "text.txt")
    book = load_book(data / other)
    recall, precision = rouge1(text.text, book.text)
    assert recall > 0.95, f"{other}: ROUGE-1 recall {recall:.3f} against the Gutenberg text"
    assert precision > 0.95, f"{other}: ROUGE-1 precision {precision:.3f} against the Gutenberg text"
    assert abs(book.words / text.words - 1) < 0.03
    assert len(book.chapters) >= len(text.chapters) - 4  # front matter differs a little between editions


def test_sample_story_reads_the_same_in_every_format() -> None:
    books = [load_book(SAMPLES / kind / f"in-the-garden.{kind}") for kind in ("txt", "epub", "pdf")]
    for book in books:
        assert (book.title, book.author) == ("In the Garden", "R. A. Lafferty")
        assert [c.title for c in book.chapters] == ["I", "II", "III"]
        assert "Gutenberg" not in book.text  # the attribution is front (or back) matter
    txt = books[0]
    for other in books[1:]:
        assert abs(other.words - txt.words) <= txt.words // 100
        assert min(rouge1(txt.text, other.text)) > 0.99
