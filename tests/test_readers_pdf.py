"""PDF reader: paragraphs, hyphenation, page furniture, columns, chapters, encryption, scans (issue 2)."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import pytest
from pypdf import PdfWriter

from infsum.errors import CorruptDocumentError, EncryptedDocumentError, NeedsOCRError
from infsum.readers import Book, load_book
from infsum.readers.pdf import paragraphs, read_columns, strip_furniture

PROSE = "It was a fine morning and the whole family walked down to the village together."


_PLAIN = str.maketrans({"(": "[", ")": "]", "\\": "/"})  # keep PDF string literals simple


def make_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A minimal PDF with one Helvetica text line per entry, top to bottom, on each page."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for lines in pages:
        ops = "".join(
            f"BT /F1 11 Tf 72 {750 - 14 * i} Td ({x.translate(_PLAIN)}) Tj ET\n" for i, x in enumerate(lines)
        )
        objects.append(f"<< /Length {len(ops)} >>\nstream\n{ops}endstream")
        content = len(objects)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


ENDINGS = ["The end of a paragraph.", "So it ended.", "That was all.", "And then home."]


def book_pages(n: int) -> list[list[str]]:
    """n pages of prose under a running header, with a page number at the foot."""
    pages = []
    for i in range(n):
        body = [PROSE] * 6 + [ENDINGS[i % len(ENDINGS)]]
        if i == 0:
            body = ["Chapter 1", *body]
        if i == 2:
            body = ["Chapter 2", *body]
        pages.append(["THE VILLAGE STORY", *body, str(i + 1)])
    return pages


def test_pdf_drops_running_headers_and_page_numbers(tmp_path: Path) -> None:
    book = load_book(make_pdf(tmp_path / "b.pdf", book_pages(4)))
    assert [c.title for c in book.chapters] == ["Chapter 1", "Chapter 2"]
    assert "VILLAGE STORY" not in book.text
    assert not re.search(r"\b[1-4]\b", book.text)
    assert book.chapters[0].text.split("\n\n")[0] == " ".join([PROSE] * 6 + ["The end of a paragraph."])


def test_pdf_dehyphenation_uses_the_documents_own_words() -> None:
    lines = [
        "Mr. Bin-",
        "gley arrived with a well-",
        "known friend; Bingley and the well-known friend were wel-",
        "come and the half-",
        "hour passed in a well-known way and a long half-hour.",
    ]
    (para,) = paragraphs(lines, {w.lower() for x in lines for w in re.findall(r"\w+(?:-\w+)*", x)}, 200)
    assert para == (
        "Mr. Bingley arrived with a well-known friend; Bingley and the well-known friend were welcome "
        "and the half-hour passed in a well-known way and a long half-hour."
    )


def test_pdf_short_line_ends_a_paragraph_only_at_a_sentence_end() -> None:
    lines = [
        "A long line of text that fills the measure of the page",
        "ends here.",
        "Wrapped around",
        "a picture.",
    ]
    assert paragraphs(lines, set(), 55) == [
        "A long line of text that fills the measure of the page ends here.",
        "Wrapped around a picture.",
    ]


def test_strip_furniture_keeps_chapter_openings() -> None:
    words = ["one", "two", "three", "four", "five"]
    pages = [
        ["A RUNNING HEAD", f"Chapter {i + 1}", f"Text {w}.", f"More {w}.", f"- {i + 1} -"]
        for i, w in enumerate(words)
    ]
    assert strip_furniture(pages)[2] == ["Chapter 3", "Text three.", "More three."]


def test_read_columns_reads_left_column_then_right() -> None:
    rows = [f"left {i:02d} words here      right {i:02d} words here" for i in range(12)]
    layout = "\n".join(["            A TITLE ACROSS THE PAGE              ", *rows])
    lines = read_columns(layout)
    assert lines == ["A TITLE ACROSS THE PAGE"] + [f"left {i:02d} words here" for i in range(12)] + [
        f"right {i:02d} words here" for i in range(12)
    ]
    assert read_columns("one column only\nof plain text\n") is None


def test_pdf_without_text_layer_needs_ocr(tmp_path: Path) -> None:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.write(tmp_path / "scan.pdf")
    with pytest.raises(NeedsOCRError, match=r"scan\.pdf: no text layer \(a scan\); run OCR first"):
        load_book(tmp_path / "scan.pdf")


def test_pdf_encrypted_needs_the_password(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=make_pdf(tmp_path / "plain.pdf", book_pages(1)))
    writer.encrypt("secret", algorithm="AES-128")
    writer.write(tmp_path / "locked.pdf")
    with pytest.raises(
        EncryptedDocumentError, match=r"locked\.pdf: encrypted; pass the password with --password"
    ):
        load_book(tmp_path / "locked.pdf")
    with pytest.raises(EncryptedDocumentError, match=r"locked\.pdf: wrong password"):
        load_book(tmp_path / "locked.pdf", password="nope")
    assert load_book(tmp_path / "locked.pdf", password="secret").chapters[0].title == "Chapter 1"


def test_pdf_broken_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    with pytest.raises(CorruptDocumentError, match=r"junk\.pdf: not a readable PDF"):
        load_book(tmp_path / "junk.pdf")


def pdf_dir(shared: Path) -> Path:
    return shared / "data" / "pdf"


@functools.cache
def read_shared(path: Path) -> tuple[Book, float]:
    """A shared PDF read once per test session, with the seconds the read took."""
    start = time.perf_counter()
    book = load_book(path)
    return book, time.perf_counter() - start


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "chapters", "words", "title"),
    [
        ("gitenberg_alice30_latex.pdf", 12, 26460, None),  # words: books/alices-adventures-in-wonderland
        ("gitenberg_alice_11-pdf_word.pdf", 12, 26460, "Alice's Adventures in Wonderland"),
        ("gitenberg_pride-and-prejudice_pandp12p_latex.pdf", 61, 121500, "Pride and Prejudice"),
        ("samplefiles_009_GeoTopo-komprimiert_de.pdf", 11, 24600, "Geometrie und Topologie"),
    ],
)
def test_shared_pdf_books(shared_dir: Path, name: str, chapters: int, words: int, title: str | None) -> None:
    book, seconds = read_shared(pdf_dir(shared_dir) / name)
    assert seconds < 30
    assert len(book.chapters) == chapters
    assert abs(book.words / words - 1) < 0.03
    if title:
        assert book.title == title
    assert "Project Gutenberg" not in book.text and "SMALL PRINT" not in book.text


@pytest.mark.shared
def test_shared_pdf_hyphenation_and_furniture(shared_dir: Path) -> None:
    """Pride and Prejudice breaks about 1,300 words across lines; none should survive split."""
    text = read_shared(pdf_dir(shared_dir) / "gitenberg_pride-and-prejudice_pandp12p_latex.pdf")[0].text
    assert "Bin-gley" not in text and "Bin- gley" not in text and text.count("Bingley") > 250
    assert "possession of a good fortune" in text
    assert text.count("to-morrow") > 10  # a real hyphen, spelled so mid-line too
    assert not re.search(r"^\d+$", text, re.M)  # no page numbers left as paragraphs
    geo = read_shared(pdf_dir(shared_dir) / "samplefiles_009_GeoTopo-komprimiert_de.pdf")[0]
    assert "TOPOLOGISCHE RÄUME" not in geo.text  # the running head
    assert geo.chapters[0].title == "1 Topologische Grundbegriffe"


@pytest.mark.shared
def test_shared_pdf_columns_read_in_order(shared_dir: Path) -> None:
    two = load_book(pdf_dir(shared_dir) / "samplefiles_026_multicolumn_2col.pdf")
    assert "Lorem ipsum dolor sit amet, consectetuer adipiscing elit. Ut purus elit" in two.text
    three = load_book(pdf_dir(shared_dir) / "pdfplumber_federal-register-2020-17221_3col.pdf")
    assert "Federal Register / Vol" not in three.text and "Federal Register/Vol" not in three.text
    assert "the manufacturer, and the operator" in three.text  # a sentence crossing column lines
    ocr = load_book(pdf_dir(shared_dir) / "pypdf_Seige_of_Vicksburg_Sample_OCR.pdf")
    assert ocr.text.count("SIEGE") <= 1 and ocr.words > 2000  # the running head, less one page that splits it


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["ocrmypdf_c02-22_huckfinn_scan_imageonly.pdf", "ocrmypdf_linn_2col_scan_imageonly.pdf"]
)
def test_shared_image_only_pdfs_need_ocr(shared_dir: Path, name: str) -> None:
    with pytest.raises(NeedsOCRError, match=rf"{name}: no text layer"):
        load_book(pdf_dir(shared_dir) / name)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("pypdf_r2-empty-password_ENC.pdf", None),
        ("pypdf_r6-user-password_ENC.pdf", None),
        ("pypdf_r6-user-password_ENC.pdf", "asdfzxcv"),
        ("pypdf_r4-aes-user-password_ENC.pdf", "asdfzxcv"),
        ("samplefiles_005_libreoffice-writer-password_ENC.pdf", "openpassword"),
    ],
)
def test_shared_encrypted_pdfs_open(shared_dir: Path, name: str, password: str | None) -> None:
    assert load_book(pdf_dir(shared_dir) / name, password=password).words > 0


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["pypdf_r4-aes-user-password_ENC.pdf", "samplefiles_005_libreoffice-writer-password_ENC.pdf"]
)
def test_shared_encrypted_pdfs_refuse_without_password(shared_dir: Path, name: str) -> None:
    with pytest.raises(
        EncryptedDocumentError, match=rf"{name}: encrypted; pass the password with --password"
    ):
        load_book(pdf_dir(shared_dir) / name)
    with pytest.raises(EncryptedDocumentError, match=rf"{name}: wrong password"):
        load_book(pdf_dir(shared_dir) / name, password="wrong")
