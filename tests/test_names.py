"""Names: the book's main characters in bounded memory, and the names a summary invents (issue 16)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.cli import app
from infsum.names import NameCounter, characters, mid_sentence_names, unsupported_names

STORY = (
    'Elizabeth walked with Mr. Darcy. "Lizzy," said Jane, "where is Darcy?" Then Elizabeth laughed.'
    "\n\nJane smiled at Elizabeth and Bingley on Monday."
)


def test_names_are_words_capitalised_mid_sentence_titles_and_days_left_out() -> None:
    # "Elizabeth" and "Then" open sentences, "Lizzy" opens a quotation, "Mr" and "Monday" are no names
    assert mid_sentence_names(STORY) == ["Darcy", "Jane", "Darcy", "Elizabeth", "Elizabeth", "Bingley"]


def test_characters_rank_by_mentions() -> None:
    assert characters([STORY]) == ["Darcy", "Elizabeth", "Jane", "Bingley"]
    assert characters([STORY, "He met Bingley, then Bingley again and Bingley."], top=1) == ["Bingley"]


def test_the_counter_is_bounded_and_keeps_every_frequent_name() -> None:
    stream = [f"Name{i % 997}" for i in range(20000)] + ["Heavy"] * 3000  # 3000 of 23000 > 1/(8 + 1)
    counter = NameCounter(capacity=8)
    for i in range(0, len(stream), 100):
        counter.add(stream[i : i + 100])
        assert len(counter.counts) <= 8
    assert "Heavy" in counter.counts
    exact = Counter(stream)
    for name, count in counter.counts.items():  # Misra-Gries never over-counts, and errs by <= n/(k+1)
        assert exact[name] - len(stream) / 9 <= count <= exact[name]


def test_unsupported_names_are_the_summary_names_the_book_never_mentions() -> None:
    summary = "Meanwhile Elizabeth marries Darcy, and Mary-Daisy leaves for London with Jane."
    # "Meanwhile" only opens a sentence: not a name; the book's names are found in any case
    assert unsupported_names(summary, STORY) == ["Mary-Daisy", "London"]
    assert unsupported_names(summary, STORY + " mary-daisy went to london.") == []


def test_names_the_book_has_only_in_longer_words_or_with_curly_apostrophes_are_not_invented() -> None:
    book = "Transcriber's note. The muck man went to Jordan\u2019s Planet for a Non-P marriage with Tr'en."
    summary = "It was the Transcriber, then Jordan and Tr\u2019en, a Non marriage, and Quibble."
    assert unsupported_names(summary, book) == ["Quibble"]
    assert unsupported_names("Then Tr'en left with Jordan.", "Tr\u2019en met Jordan-Smith.") == []


def test_a_compound_is_the_books_when_its_capitalised_parts_are() -> None:
    book = "Stark watched the Earth rise, and Hawwah said nothing."
    summary = "Then an Earth-like world, a Stark-Hawwah pact, a Stark-Kayl feud and Kayl'd left."
    # "like" needs no check (only capitalised parts can be names); "Kayl" is in no book word
    assert unsupported_names(summary, book) == ["Stark-Kayl", "Kayl'd"]


@pytest.fixture
def story(tmp_path: Path) -> Path:
    path = tmp_path / "lighthouse.txt"
    path.write_text(
        "The Lighthouse\n\nOld Tom kept the light. Every night Tom counted ships, and Tom wrote to Ada.\n\n"
        "One winter Ada came to the rock, and Ada stayed with Tom.\n",
        encoding="utf-8",
    )
    return path


def test_the_summary_json_and_markdown_carry_the_characters(story: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, [str(story), "--strategy", "lead", "--words", "6", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["characters"] == ["Tom", "Ada"] and data["unsupported_names"] == []
    md = runner.invoke(app, [str(story), "--strategy", "lead", "--words", "6"]).stdout
    footer = md.split("\n---\n")[1]
    assert footer.splitlines()[1] == "*Main characters (most named in the book): Tom, Ada.*"


def test_an_invented_name_is_a_warning_line_and_quiet_hides_it(story: Path, monkeypatch) -> None:
    from infsum.strategies import STRATEGIES, Draft

    lead = STRATEGIES["lead"]
    invent = lambda job: Draft("Old Tom wrote to Mary-Daisy about Ada.")  # noqa: E731
    monkeypatch.setitem(STRATEGIES, "lead", lead.__class__(lead.name, invent, False, False, lead.help))
    runner = CliRunner()
    result = runner.invoke(app, [str(story), "--strategy", "lead", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unsupported_names"] == ["Mary-Daisy"]
    assert result.stderr == f"warning: {story}: the summary names Mary-Daisy, which the book never mentions\n"
    quiet = runner.invoke(app, [str(story), "--strategy", "lead", "--json", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
