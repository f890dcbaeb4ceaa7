"""EPUB reader: spine order, titles, notes and images, awkward files, zip and XML safety (issue 2)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from ebooklib import epub

from infsum.errors import CorruptDocumentError, UnsafeDocumentError
from infsum.limits import MAX_ENTRY_MB, MB
from infsum.readers import load_book

XHTML = '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>{}</body></html>'


def make_epub(path: Path, chapters: list[tuple[str, str]], *, toc: bool = True, cover: bool = True) -> Path:
    """An EPUB 3 with ebooklib: a non-linear cover page, then one document per (title, body html)."""
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("Test Book")
    book.set_language("en")
    book.add_author("Ann Writer")
    items = []
    for i, (title, body) in enumerate(chapters, 1):
        item = epub.EpubHtml(title=title, file_name=f"ch{i}.xhtml", lang="en")
        item.content = XHTML.format(body)
        book.add_item(item)
        items.append(item)
    spine: list = []
    if cover:
        page = epub.EpubHtml(title="Cover", file_name="cover.xhtml")
        page.content = XHTML.format("<p>COVER TEXT</p>")
        book.add_item(page)
        spine.append((page, "no"))
    book.toc = items if toc else []
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [*spine, "nav", *items]
    epub.write_epub(str(path), book)
    return path


def test_epub_reads_spine_in_order_with_nav_titles(tmp_path: Path) -> None:
    path = make_epub(
        tmp_path / "b.epub",
        [
            ("The Start", "<h1>The Start</h1><p>First words here.</p><p>Second paragraph.</p>"),
            ("The Middle", "<h2>II</h2><p>Middle   words\n across lines.</p>"),
            ("The End", "<p>Last words.</p>"),
        ],
    )
    book = load_book(path)
    assert (book.title, book.author, book.language) == ("Test Book", "Ann Writer", "en")
    assert [c.title for c in book.chapters] == ["The Start", "The Middle", "The End"]
    assert book.chapters[0].text == "First words here.\n\nSecond paragraph."
    assert book.chapters[1].text == "Middle words across lines."
    assert "COVER" not in book.text and "Contents" not in book.text


def test_epub_drops_notes_and_images_without_splicing(tmp_path: Path) -> None:
    body = (
        '<p>He ran away<a href="#n1" epub:type="noteref">1</a> quickly.<img src="x.png" alt="a picture"/></p>'
        '<aside epub:type="footnote" id="n1"><p>A note about running.</p></aside>'
        "<p>Then&nbsp;he &amp; she rested.</p>"
    )
    book = load_book(make_epub(tmp_path / "n.epub", [("One", body)]))
    assert book.chapters[0].text == "He ran away quickly.\n\nThen he & she rested."


def test_epub_without_toc_takes_titles_from_first_heading(tmp_path: Path) -> None:
    path = make_epub(
        tmp_path / "h.epub",
        [("x", "<h1>Opening</h1><p>Some text.</p>"), ("y", "<p>No heading here.</p>")],
        toc=False,
    )
    assert [c.title for c in load_book(path).chapters] == ["Opening", "Section 2"]


def _zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_epub_zip_bomb_is_refused(tmp_path: Path) -> None:
    big = bytes(MAX_ENTRY_MB * MB + 1)
    path = _zip(tmp_path / "bomb.epub", {"mimetype": b"application/epub+zip", "big.xhtml": big})
    with pytest.raises(
        UnsafeDocumentError, match=r"bomb\.epub: entry 'big\.xhtml' unpacks to 65 MB, over the 64 MB limit"
    ):
        load_book(path)


def test_epub_highly_compressed_entry_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "ratio.epub", {"mimetype": b"application/epub+zip", "z.xhtml": bytes(4 << 20)})
    with pytest.raises(UnsafeDocumentError, match=r"ratio\.epub: entry 'z\.xhtml' is compressed over 100:1"):
        load_book(path)


@pytest.mark.parametrize(
    "name", ["../escape.xhtml", "/etc/escape.xhtml", "OPS/../../escape.xhtml", "C:/x.xhtml"]
)
def test_epub_path_escaping_entry_is_refused(tmp_path: Path, name: str) -> None:
    path = _zip(tmp_path / "escape.epub", {"mimetype": b"application/epub+zip", name: b"<p/>"})
    with pytest.raises(UnsafeDocumentError, match=r"escape\.epub: entry .* points outside the archive"):
        load_book(path)


def test_epub_external_entity_is_refused(tmp_path: Path) -> None:
    good = make_epub(tmp_path / "good.epub", [("One", "<p>Text.</p>")])
    evil = '<?xml version="1.0"?><!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><p>&xxe;</p>'
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "xxe.epub", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, evil.encode() if info.filename.endswith("ch1.xhtml") else data)
    with pytest.raises(UnsafeDocumentError, match=r"xxe\.epub: EPUB/ch1\.xhtml declares XML entities"):
        load_book(tmp_path / "xxe.epub")


def test_epub_broken_files_raise_corrupt(tmp_path: Path) -> None:
    good = make_epub(tmp_path / "good.epub", [("One", "<p>Text.</p>")]).read_bytes()
    (tmp_path / "cut.epub").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.epub").write_bytes(b"this is not a zip file at all")
    _zip(tmp_path / "noopf.epub", {"mimetype": b"application/epub+zip", "a.txt": b"hello"})
    for name in ("cut.epub", "text.epub", "noopf.epub"):
        with pytest.raises(CorruptDocumentError, match=rf"{name}: not a readable EPUB"):
            load_book(tmp_path / name)


def test_epub_survives_a_broken_chapter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = make_epub(tmp_path / "good.epub", [("One", "<p>Good text.</p>"), ("Two", "<p>More text.</p>")])
    buf = io.BytesIO()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            broken = info.filename.endswith("ch2.xhtml")
            dst.writestr(info, b"\x00\x01 not xml <<<" if broken else src.read(info))
    (tmp_path / "broken.epub").write_bytes(buf.getvalue())
    book = load_book(tmp_path / "broken.epub")
    assert book.text == "Good text."
    assert "ch2.xhtml is not readable XHTML" in caplog.text


# (file, chapters, reference words, titles that must be among the chapter titles)
SHARED_EPUBS = {
    "se_h-g-wells_the-time-machine.epub": (13, 32467, ["I", "XII", "Epilogue"]),
    "se_jack-london_the-call-of-the-wild.epub": (
        8, 31851, ["Epigraph", "I: Into the Primitive", "VII: The Sounding of the Call"]
    ),
    "se_robert-louis-stevenson_the-strange-case-of-dr-jekyll-and-mr-hyde.epub": (
        10, 25500, ["Story of the Door", "Henry Jekyll’s Full Statement of the Case"]
    ),
    "se_joseph-conrad_heart-of-darkness.epub": (3, 38000, ["I", "II", "III"]),
    "gitenberg_persuasion.epub": (25, 83306 + 2227, ["VOLUME ONE: Chapter I", "VOLUME TWO: Chapter I"]),
    "epubjs_alice.epub": (10, 9650, ["Down The Rabbit-Hole", "Alice's Evidence"]),
    "epubjs_moby-dick.epub": (138, 212889, ["Chapter 1. Loomings.", "Epilogue"]),
}  # fmt: skip
# references: Time Machine, Call of the Wild and Persuasion (plus its 2,227-word biographical notice)
# from books/*/meta.json; Moby-Dick from data/README.md; Jekyll, Heart of Darkness and the abridged
# Alice are the usual published word counts of those texts.


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(SHARED_EPUBS))
def test_shared_epubs_chapters_words_and_titles(shared_dir: Path, name: str) -> None:
    chapters, words, titles = SHARED_EPUBS[name]
    book = load_book(shared_dir / "data" / "epub" / name)
    assert len(book.chapters) == chapters
    assert abs(book.words / words - 1) < 0.03
    assert set(titles) <= {c.title for c in book.chapters}
    assert book.title and book.author
    for junk in ("Standard Ebooks", "Uncopyright", "Project Gutenberg", "<"):
        assert junk not in book.text


@pytest.mark.shared
def test_shared_epub_titles_match_the_book_folders(shared_dir: Path) -> None:
    for slug, name in [("the-time-machine", "se_h-g-wells_the-time-machine.epub"),
                       ("the-call-of-the-wild", "se_jack-london_the-call-of-the-wild.epub"),
                       ("persuasion", "gitenberg_persuasion.epub")]:  # fmt: skip
        meta = json.loads((shared_dir / "data" / "books" / slug / "meta.json").read_text())
        book = load_book(shared_dir / "data" / "epub" / name)
        assert (book.title, book.author) == (meta["title"], meta["author"])


@pytest.mark.shared
def test_nearly_empty_epub_reads_its_title_page(shared_dir: Path) -> None:
    book = load_book(shared_dir / "data" / "epub" / "epubjs_alice_without_cover.epub")
    assert [c.title for c in book.chapters] == ["Title Page"]
    assert 0 < book.words <= 24
