"""Plain-text reader: encodings, Project Gutenberg header and footer, chapter headings (issue 2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from infsum.errors import BookNotFoundError, CorruptDocumentError, EmptyDocumentError, UnsupportedFormatError
from infsum.readers import Book, Chapter, load_book

STORY = (
    "The Lighthouse\n\nby A. Keeper\n\n"
    "CHAPTER I.\nThe Storm\n\nThe wind rose over the sea. Nobody slept that night.\n\n"
    "It was cold.\n\n"
    "CHAPTER II.\nThe Calm\n\nMorning came, and with it a strange quiet café.\n"
)

GUTENBERG = (
    "The Project Gutenberg eBook of Tiny\n\nTitle: Tiny Tale\n\nAuthor: Ann Writer\n\nLanguage: English\n\n"
    "*** START OF THE PROJECT GUTENBERG EBOOK TINY TALE ***\n\n\nTINY TALE\n\nContents\n\n"
    "Chapter 1\nChapter 2\n\n\nChapter 1\n\nOnce upon a time there was a tale.\n\n"
    "Chapter 2\n\nIt ended well.\n\n*** END OF THE PROJECT GUTENBERG EBOOK TINY TALE ***\n\n"
    "Section 1. General Terms of Use and Redistributing Project Gutenberg electronic works\n"
)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "cp1252"]
)
def test_text_reader_detects_encoding(tmp_path: Path, encoding: str) -> None:
    if encoding == "utf-16-le-bom":
        data = b"\xff\xfe" + STORY.encode("utf-16-le")
    elif encoding == "utf-16-be-bom":
        data = b"\xfe\xff" + STORY.encode("utf-16-be")
    else:
        data = STORY.encode(encoding)
    book = load_book(write(tmp_path, "story.txt", data))
    assert "café" in book.text
    assert "\ufeff" not in book.text
    assert book.title == "The Lighthouse"
    assert book.author == "A. Keeper"


def test_text_reader_logs_cp1252_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="infsum"):
        book = load_book(write(tmp_path, "story.txt", "“Quoted” café".encode("cp1252")))
    assert book.text == "“Quoted” café"
    assert "Windows-1252" in caplog.text


def test_text_reader_finds_chapters_with_subtitles(tmp_path: Path) -> None:
    book = load_book(write(tmp_path, "story.txt", STORY.encode()))
    assert [c.title for c in book.chapters] == ["CHAPTER I. The Storm", "CHAPTER II. The Calm"]
    assert book.chapters[0].text == "The wind rose over the sea. Nobody slept that night.\n\nIt was cold."
    assert book.words == 10 + 3 + 9


def test_text_reader_strips_gutenberg_header_footer_and_contents(tmp_path: Path) -> None:
    book = load_book(write(tmp_path, "tiny.txt", GUTENBERG.encode()))
    assert (book.title, book.author, book.language) == ("Tiny Tale", "Ann Writer", "en")
    assert [c.title for c in book.chapters] == ["Chapter 1", "Chapter 2"]
    assert "Gutenberg" not in book.text and "Contents" not in book.text


@pytest.mark.parametrize(
    ("heading", "title"),
    [
        ("CHAPTER XII", "CHAPTER XII"),
        ("Chapter 12: The End", "Chapter 12: The End"),
        ("XIV", "XIV"),
        ("BOOK ONE", "BOOK ONE"),
        ("3. The Return", "3. The Return"),
    ],
)
def test_text_reader_recognises_heading_styles(tmp_path: Path, heading: str, title: str) -> None:
    prose = "A sentence of prose that is long enough to be a paragraph of the story."
    second = heading.replace("12", "13").replace("XII", "XIII")
    text = f"Book\n\n{heading}\n\n{prose}\n\n{second}\n\n{prose}\n"
    text = text.replace("XIV\n\n" + prose + "\n\nXIV", "XIV\n\n" + prose + "\n\nXV")
    text = text.replace("BOOK ONE\n\n" + prose + "\n\nBOOK ONE", "BOOK ONE\n\n" + prose + "\n\nBOOK TWO")
    text = text.replace("3. The Return\n\n" + prose + "\n\n3.", "3. The Return\n\n" + prose + "\n\n4.")
    book = load_book(write(tmp_path, "b.txt", text.encode()))
    assert len(book.chapters) == 2
    assert book.chapters[0].title == title
    assert book.chapters[0].text == prose


def test_text_without_headings_is_one_chapter_named_after_the_book(tmp_path: Path) -> None:
    book = load_book(write(tmp_path, "plain.txt", b"A Short Note\n\nJust one paragraph here.\n"))
    assert book.chapters == (Chapter("A Short Note", "Just one paragraph here."),)


def test_markdown_headings_are_chapters(tmp_path: Path) -> None:
    book = load_book(write(tmp_path, "b.md", b"# The Start\n\nSome words.\n\n# The End\n\nMore words.\n"))
    assert [c.title for c in book.chapters] == ["The Start", "The End"]


def test_book_to_dict_and_text() -> None:
    book = Book("T", "A", "en", (Chapter("One", "a b\n\nc"), Chapter("Two", "d")), "x.txt")
    assert book.text == "a b\n\nc\n\nd"
    assert book.to_dict() == {
        "title": "T",
        "author": "A",
        "language": "en",
        "words": 4,
        "chapters": [{"title": "One", "words": 3}, {"title": "Two", "words": 1}],
    }


def test_load_book_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BookNotFoundError, match=r"^.*nope\.txt: no such file"):
        load_book(tmp_path / "nope.txt")
    with pytest.raises(UnsupportedFormatError, match=r"x\.docx: unsupported format '\.docx'"):
        load_book(write(tmp_path, "x.docx", b"hi"))
    with pytest.raises(EmptyDocumentError, match=r"empty\.txt: no text found"):
        load_book(write(tmp_path, "empty.txt", b"\n\n  \n"))
    with pytest.raises(CorruptDocumentError, match=r"bin\.txt: binary data"):
        load_book(write(tmp_path, "bin.txt", b"\x00\x01\x02PK\x00"))


def _gutenberg_books(shared: Path) -> list[Path]:
    return sorted((shared / "data" / "books").glob("*/text.txt"))


@pytest.mark.shared
def test_gutenberg_books_lose_header_and_footer_and_keep_their_words(shared_dir: Path) -> None:
    books = _gutenberg_books(shared_dir)
    assert len(books) == 10
    for path in books:
        meta = json.loads((path.parent / "meta.json").read_text())
        book = load_book(path)
        assert book.title == meta["title"].split(" (")[0].replace("'", "’") or book.title == meta["title"]
        assert abs(book.words / meta["text"]["words_body"] - 1) < 0.02, path
        assert "Project Gutenberg" not in book.text, path
        assert "*** START" not in book.text and "*** END" not in book.text, path


EXPECTED_CHAPTERS = {  # numbered chapters in each Gutenberg text (plus a long preface where there is one)
    "alices-adventures-in-wonderland": 12,
    "persuasion": 24,
    "the-call-of-the-wild": 7,
    "the-mysterious-affair-at-styles": 13,
    "the-time-machine": 17,  # 16 chapters and the epilogue
    "siddhartha": 14,  # two parts (one with a dedication) and twelve chapters
    "the-castle-of-otranto": 6,  # the prefaces and five chapters
    "the-variable-man": 4,
}


@pytest.mark.shared
@pytest.mark.parametrize(("slug", "count"), sorted(EXPECTED_CHAPTERS.items()))
def test_gutenberg_books_chapters_found(shared_dir: Path, slug: str, count: int) -> None:
    book = load_book(shared_dir / "data" / "books" / slug / "text.txt")
    assert len(book.chapters) == count
    assert all(c.words > 0 for c in book.chapters)
