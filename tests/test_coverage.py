"""Where a summary comes from: each sentence placed in the book, the histogram by tenths, and
``infsum score --book`` (issues 15 and 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.cli import app
from infsum.coverage import MIN_SCORE, PassageIndex, summary_coverage, tenth

runner = CliRunner()
N, WORDS = 100, 20  # the hand-built book: N sentences of WORDS words, no word shared between two


def sentence(i: int) -> str:
    """Sentence ``i`` of the hand-built book: WORDS words found nowhere else in it (the first
    capitalised, so that the sentence rule ends the sentence before it)."""
    return f"W{i}x0 " + " ".join(f"w{i}x{j}" for j in range(1, WORDS - 1)) + f" w{i}end."


BOOK = " ".join(sentence(i) for i in range(N))  # sentence i is words 20 i .. 20 i + 19 of 2,000


def test_a_sentence_from_the_70_percent_point_lands_in_bin_7() -> None:
    # 20-word passages start every 10 words: passage 140 is sentence 70 exactly, words 1400..1420
    index = PassageIndex(BOOK, passage_words=WORDS)
    cov = index.coverage(sentence(70))
    (match,) = cov.sentences
    # it lies in halves 140 and 141 alike: the first, words 1400..1410; the passage lacks only the
    # word pair across the halves' boundary
    assert match.position == pytest.approx(1405 / 2000) and 0.95 < match.score < 1
    assert cov.histogram == (0, 0, 0, 0, 0, 0, 0, 1, 0, 0)
    assert index.match(sentence(3)).position == pytest.approx(65 / 2000)  # the middle of words 60..70


def test_positions_with_the_default_passages() -> None:
    cov = summary_coverage(" ".join(sentence(i) for i in (5, 35, 75)), BOOK)
    # 200-word passages every 100 words; a sentence goes to the middle of the 100-word half of its
    # passage that holds it: sentence 5 (words 100..120) to 150 of 2,000
    assert [m.position for m in cov.sentences] == pytest.approx([0.075, 0.375, 0.775])
    assert cov.histogram == (1, 0, 0, 1, 0, 0, 0, 1, 0, 0)


def test_a_summary_of_the_last_passage_lands_in_the_last_bin() -> None:
    cov = summary_coverage(f"{sentence(98)} {sentence(99)}", BOOK)
    assert cov.histogram == (0,) * 9 + (2,)
    assert cov.last_tenth == 1.0 and cov.shares[-1] == 1.0
    assert [m.position for m in cov.sentences] == pytest.approx([0.975, 0.975])  # words 1900..2000


def test_the_end_of_the_book_is_in_the_last_bin() -> None:
    assert [tenth(p) for p in (0.0, 0.0999, 0.1, 0.7, 0.95, 1.0)] == [0, 0, 1, 7, 9, 9]


def test_unmatched_sentences_are_counted_not_placed() -> None:
    summary = f"{sentence(42)} The zebra danced happily. It was the one. {sentence(10)}"
    cov = summary_coverage(summary, BOOK)
    assert [m.position is None for m in cov.sentences] == [False, True, True, False]
    assert [m.score for m in cov.sentences][1:3] == [0.0, 0.0]  # no term of the book; no term at all
    assert (cov.matched, cov.unmatched) == (2, 2)
    assert cov.histogram == (0, 1, 0, 0, 1, 0, 0, 0, 0, 0)  # nothing put at position 0
    assert cov.shares == (0.0, 0.25, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_a_weak_match_is_unmatched() -> None:
    # 2 of a sentence's 20 words in a 200-word passage: a cosine far under the floor
    weak = " ".join(sentence(50).split()[:2] + [f"new{j}" for j in range(18)]) + "."
    (match,) = summary_coverage(weak, BOOK).sentences
    assert 0 < match.score < MIN_SCORE and match.position is None


def test_the_histogram_sums_to_the_matched_sentences() -> None:
    summary = " ".join(sentence(i) for i in range(0, N, 7)) + " Nothing here matches. Nor here."
    cov = summary_coverage(summary, BOOK)
    assert len(cov.sentences) == 17 and sum(cov.histogram) == cov.matched == 15 and cov.unmatched == 2
    assert sum(cov.shares) == pytest.approx(15 / 17)
    assert cov.histogram == (2, 1, 2, 1, 2, 1, 1, 2, 1, 2)  # sentences 0, 7, 14, ... 98 by tenth
    d = cov.to_dict()
    assert set(d) == {"sentences", "matched", "unmatched", "histogram", "shares", "last_tenth", "matches"}
    assert d["histogram"] == list(cov.histogram) and d["matches"][-1] == {"position": None, "score": 0.0}


def test_stemming_matches_other_forms_of_a_word() -> None:
    book = (
        "The miller walked to the river every morning and counted his geese. " * 20
        + "Years later the old dragons burned the castles of the northern kingdom. " * 20
    )
    (match,) = summary_coverage("A dragon burns castle after castle.", book).sentences
    # without stemming no word of the sentence is in the book; the dragons are words 240..480
    assert match.position is not None and match.position > 0.5


def test_an_empty_book_or_summary() -> None:
    assert summary_coverage("", BOOK).sentences == () and summary_coverage("", BOOK).last_tenth == 0.0
    (match,) = summary_coverage("Anything at all.", "").sentences
    assert match.position is None and match.score == 0.0
    with pytest.raises(ValueError, match="passage_words must be at least 2"):
        PassageIndex(BOOK, passage_words=1)


@pytest.mark.shared
def test_references_match_their_own_story_not_another(shared_dir: Path) -> None:
    """MIN_SCORE's claim, on the SQuALITY dev stories: most reference sentences reach the floor in
    their own story, few in the next story."""
    dev = shared_dir / "data" / "squality" / "dev"
    stories = sorted(p for p in dev.glob("*.txt") if ".ref" not in p.name)[:8]
    indexes = [PassageIndex(p.read_text(encoding="utf-8")) for p in stories]
    own = other = total = 0
    for k, story in enumerate(stories):
        for ref in sorted(dev.glob(f"{story.stem}.ref*.txt")):
            text = ref.read_text(encoding="utf-8")
            own += indexes[k].coverage(text).matched
            other += indexes[(k + 1) % len(stories)].coverage(text).matched
            total += len(indexes[k].coverage(text).sentences)
    assert own / total > 0.5 and other / total < 0.15


# ---------------------------------------------------------------- infsum score --book


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    book = tmp_path / "book.txt"
    book.write_text(BOOK, encoding="utf-8")
    summary = tmp_path / "summary.txt"
    summary.write_text(f"{sentence(98)} Then Zorblax ate {sentence(99)}", encoding="utf-8")
    ref = tmp_path / "ref.txt"
    ref.write_text(f"{sentence(5)} {sentence(55)}", encoding="utf-8")
    return {"book": book, "summary": summary, "ref": ref}


def test_score_book_json(files: dict[str, Path]) -> None:
    args = ["score", str(files["summary"]), str(files["ref"]), "--book", str(files["book"]), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "overall",
        "book",
        "summary",
        "references",
    }
    assert data["book"] == {"path": str(files["book"]), "words": 2000}
    summary, (ref,) = data["summary"], data["references"]
    assert set(summary) == {"path", "coverage", "unsupported_names", "invented_names"}
    # "Then Zorblax ate W99x0 ... w99end." is one sentence: Zorblax is unknown, the rest is the last passage
    assert summary["coverage"]["histogram"] == [0] * 9 + [2]
    assert summary["unsupported_names"] == ["Zorblax"] and summary["invented_names"] == 1
    assert ref["path"] == str(files["ref"]) and ref["coverage"]["histogram"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert ref["unsupported_names"] == [] and ref["invented_names"] == 0
    assert ref["coverage"]["last_tenth"] == 0.0 and summary["coverage"]["last_tenth"] == 1.0


def test_score_book_table(files: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["score", str(files["summary"]), str(files["ref"]), "--book", str(files["book"])]
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "ROUGE-Lsum" in out and "Where the sentences come from in book.txt" in out
    assert " 0  0  0  0  0  0  0  0  0  2 " in out and " 1  0  0  0  0  1  0  0  0  0 " in out
    assert "invented names (never in the book): summary: Zorblax" in " ".join(out.split())


def test_score_without_book_is_unchanged(files: dict[str, Path]) -> None:
    result = runner.invoke(app, ["score", str(files["summary"]), str(files["ref"]), "--json"])
    assert result.exit_code == 0
    assert set(json.loads(result.stdout)) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "overall"}
    table = runner.invoke(app, ["score", str(files["summary"]), str(files["ref"])]).stdout
    assert "ROUGE-Lsum" in table and "Where the sentences" not in table


def test_score_with_a_missing_book_is_one_line_and_exit_2(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = runner.invoke(app, ["score", str(files["summary"]), str(files["ref"]), "--book", str(missing)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: no such file; check the path\n" and result.stdout == ""


def test_score_with_an_unreadable_book_format_is_one_line_and_exit_2(files: dict[str, Path]) -> None:
    doc = files["book"].with_suffix(".docx")
    doc.write_text("hello", encoding="utf-8")
    result = runner.invoke(app, ["score", str(files["summary"]), str(files["ref"]), "--book", str(doc)])
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {doc}: unsupported format '.docx'; give an .epub, .pdf, .txt or .md file\n"
    )


def test_score_book_leaves_out_infsums_own_markdown_frame(files: dict[str, Path], tmp_path: Path) -> None:
    # `infsum BOOK -o DIR` writes the Markdown: its heading and footer are no sentences of the summary
    made = runner.invoke(
        app, [str(files["book"]), "--strategy", "lead", "--words", "40", "-o", str(tmp_path)]
    )
    assert made.exit_code == 0, made.stderr
    md = tmp_path / "book.summary.md"
    assert md.read_text(encoding="utf-8").startswith("# Summary of book\n\n")
    args = ["score", str(md), str(files["ref"]), "--book", str(files["book"]), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["unsupported_names"] == []  # not "Summary", from the heading
    assert summary["coverage"]["sentences"] == 2 and summary["coverage"]["histogram"] == [2] + [0] * 9
