"""Chapter notes (``infsum BOOK --chapters``): a note per chapter written as the book streams, on
the tiny random model (the notes are nonsense: the plumbing is what is tested)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from infsum import strategies
from infsum.cli import app
from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import InfiniReader, convert
from infsum.errors import ConfigError
from infsum.models import load_model
from infsum.pipeline import summarize, summary_body
from infsum.prompt import (
    CHAPTER_INSTRUCTION,
    book_tokens,
    chat_prompt,
    max_new_tokens,
    min_new_tokens,
    trim_to_sentence,
)
from infsum.readers import Book, Chapter

torch.set_num_threads(2)
runner = CliRunner()
SEG = 16
BOOK = Book(
    "The Keeper",
    None,
    "en",
    (
        Chapter("One", "The keeper counted ships every night. He wrote their names in a book. " * 3),
        Chapter("Empty", ""),
        Chapter("Two", "One winter a ship came with no name, and he rowed out to meet it. " * 2),
    ),
    "keeper.txt",
)
STORY = (
    "CHAPTER I\n\nThe lighthouse keeper counted the ships every night. He wrote their names in a book.\n\n"
    "CHAPTER II\n\nOne winter a ship came that had no name. The keeper rowed out to meet it.\n"
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def config(tiny_model_dir: Path, **kw) -> SummarizeConfig:
    return SummarizeConfig(model=str(tiny_model_dir), words=5, memory=MemoryConfig(segment_len=SEG), **kw)


def test_notes_follow_the_chapters_and_leave_the_summary_as_it_was(loaded, tiny_model_dir) -> None:
    plain = summarize(BOOK, config(tiny_model_dir), model=loaded)
    noted = summarize(BOOK, config(tiny_model_dir, chapter_words=4), model=loaded)
    assert noted.summary == plain.summary  # reading in pieces gives the same memory
    assert [c["title"] for c in noted.chapters] == ["One", "Two"]  # the empty chapter has no text
    assert [c["words"] for c in noted.chapters] == [39, 30]
    assert sum(c["tokens"] for c in noted.chapters) == noted.tokens == plain.tokens
    assert noted.chapter_notes_by == "chapter" and "notes" in noted.seconds
    assert plain.chapters == () and plain.chapter_notes_by is None and "notes" not in plain.seconds
    # the first note by hand: the opening and chapter One read, then the note prompt closes the turn
    tok = loaded.tokenizer
    ids, starts = book_tokens(tok, BOOK)
    reader = InfiniReader(convert(loaded.model, MemoryConfig(segment_len=SEG)))
    state = reader.read(ids[: starts[1][0]])
    budget = max_new_tokens(4)
    gen = replace(SummarizeConfig().generation, max_new_tokens=budget, min_new_tokens=min_new_tokens(budget))
    out = reader.generate(
        state, chat_prompt(tok, CHAPTER_INSTRUCTION.format(words=4)).closing, gen, tok.eos_ids
    )
    assert noted.chapters[0]["note"] == trim_to_sentence(tok.decode(out, skip_special=True))
    md = noted.markdown()
    assert "\n\n## Chapter notes\n\n### One\n\n" in md and "### Two\n\n" in md
    assert md.index("## Chapter notes") < md.index("---\n*infsum")
    assert noted.to_dict()["chapters"][1] == noted.chapters[1]
    assert summary_body(md) == noted.summary.strip()  # infsum score reads the summary alone


def test_a_book_without_chapters_gets_a_note_per_span_and_says_so(
    loaded, tiny_model_dir, monkeypatch
) -> None:
    monkeypatch.setattr(strategies, "NOTE_SPAN_TOKENS", 40)
    one = replace(BOOK, chapters=BOOK.chapters[:1])
    result = summarize(one, config(tiny_model_dir, chapter_words=3), model=loaded)
    n = result.tokens
    assert [c["title"] for c in result.chapters] == [
        f"Tokens {a + 1:,} to {min(a + 40, n):,}" for a in range(0, n, 40)
    ]
    assert [c["tokens"] for c in result.chapters][:-1] == [40] * (len(result.chapters) - 1)
    assert result.chapter_notes_by == "span"
    assert "*The book has no chapters: one note per 40 tokens.*" in result.markdown()


def test_notes_need_the_infini_stream() -> None:
    with pytest.raises(
        ConfigError,
        match="^--chapters writes notes as the book streams through the memory: strategy 'hierarchical'",
    ):
        summarize(BOOK, SummarizeConfig(strategy="hierarchical", chapter_words=10))
    with pytest.raises(ConfigError, match="^--chapter-words 0 is too small"):
        SummarizeConfig(chapter_words=0)


def test_cli_chapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    book = tmp_path / "keeper.txt"
    book.write_text(STORY, encoding="utf-8")
    base = [str(book), "--model", str(tiny_model_dir), "--segment-len", str(SEG), "--words", "5", "-q"]
    result = runner.invoke(app, [*base, "--chapters", "--chapter-words", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [set(c) for c in data["chapters"]] == [{"title", "words", "tokens", "note"}] * 2
    assert [c["title"] for c in data["chapters"]] == ["CHAPTER I", "CHAPTER II"]
    assert [c["words"] for c in data["chapters"]] == [15, 16] and data["chapter_notes_by"] == "chapter"
    assert data["generation"]["max_new_tokens"] == 8  # the summary's budget; the notes have theirs
    md = runner.invoke(app, [*base, "--chapters"])
    assert md.exit_code == 0 and "## Chapter notes\n\n### CHAPTER I\n\n" in md.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--chapters", "--strategy", "lead"],
            "error: --chapters writes notes as the book streams through the memory: strategy 'lead'",
        ),
        (
            ["--chapter-words", "5"],
            "error: --chapter-words sets the length of chapter notes: give --chapters too",
        ),
        (
            ["--chapters", "--state", "s.safetensors"],
            "error: s.safetensors: chapter notes are written while the book streams",
        ),
    ],
)
def test_cli_chapter_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    book = tmp_path / "keeper.txt"
    book.write_text(STORY, encoding="utf-8")
    result = runner.invoke(app, [str(book), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1 and result.stdout == ""


def test_cli_batch_chapters_writes_the_notes(tiny_model_dir: Path, tmp_path: Path) -> None:
    root, out = tmp_path / "books", tmp_path / "out"
    root.mkdir()
    (root / "keeper.txt").write_text(STORY, encoding="utf-8")
    args = ["batch", str(root), "-o", str(out), "--model", str(tiny_model_dir), "--segment-len", str(SEG)]
    result = runner.invoke(app, [*args, "--words", "5", "--chapters", "--chapter-words", "3", "-q"])
    assert result.exit_code == 0, result.stderr
    data = json.loads((out / "keeper.summary.json").read_text(encoding="utf-8"))
    assert [c["title"] for c in data["chapters"]] == ["CHAPTER I", "CHAPTER II"]
    assert data["chapter_notes_by"] == "chapter"
    md = (out / "keeper.summary.md").read_text(encoding="utf-8")
    assert "## Chapter notes\n\n### CHAPTER I\n\n" in md and "### CHAPTER II\n\n" in md


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--chapters", "--strategy", "textrank"],
            "error: --chapters writes notes as the book streams through the memory: strategy 'textrank' "
            "does not stream it; use --strategy infini\n",
        ),
        (
            ["--chapter-words", "5"],
            "error: --chapter-words sets the length of chapter notes: give --chapters too\n",
        ),
    ],
)
def test_cli_batch_chapter_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    root = tmp_path / "books"
    root.mkdir()
    (root / "keeper.txt").write_text(STORY, encoding="utf-8")
    result = runner.invoke(app, ["batch", str(root), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert result.stderr == message and result.stdout == ""
    assert not (tmp_path / "out").exists()
