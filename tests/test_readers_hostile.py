"""Hostile inputs: bounded reading, format checks before parsing, and the right message for each case."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest

from infsum.errors import (
    ConfigError,
    CorruptDocumentError,
    DRMProtectedError,
    ScoringError,
    TooLargeError,
)
from infsum.readers import load_book
from infsum.scoring import read_text_file, score

SHARED_EPUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epub"


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk space beyond ``head``."""
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _fast(fn, *args, **kwargs):
    """Run fn, asserting it raises within two seconds (no multi-GB read); return the exception."""
    t0 = time.perf_counter()
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    assert time.perf_counter() - t0 < 2.0
    return info.value


@pytest.mark.parametrize("suffix", [".txt", ".pdf", ".epub"])
def test_huge_sparse_file_is_refused_by_size_before_reading(tmp_path: Path, suffix: str) -> None:
    head = {".pdf": b"%PDF-1.7\n", ".epub": b"PK\x03\x04"}.get(suffix, b"text ")
    path = _sparse(tmp_path / f"big{suffix}", 64 * 2**30, head)  # 64 GB, sparse
    err = _fast(load_book, path)
    assert isinstance(err, TooLargeError)
    msg = str(err)
    assert "\n" not in msg and str(path) in msg and "INFSUM_MAX_" in msg and "65536 MB" in msg


def test_size_bound_can_be_raised_with_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "book.txt"
    path.write_text("CHAPTER I\n\nSome words of a very small book.\n" * 40_000)  # ~1.6 MB
    monkeypatch.setenv("INFSUM_MAX_TEXT_MB", "1")
    assert isinstance(_fast(load_book, path), TooLargeError)
    monkeypatch.setenv("INFSUM_MAX_TEXT_MB", "2")
    assert load_book(path).words > 0
    monkeypatch.setenv("INFSUM_MAX_TEXT_MB", "lots")
    with pytest.raises(ConfigError, match="INFSUM_MAX_TEXT_MB"):
        load_book(path)


def test_zeros_named_pdf_are_refused_by_magic_bytes_before_pypdf(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "zeros.pdf", 300 * 2**20)  # 300 MB of zeros, sparse
    err = _fast(load_book, path)
    assert isinstance(err, CorruptDocumentError) and "%PDF-" in str(err) and str(path) in str(err)


def test_not_a_zip_named_epub_is_refused_by_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "fake.epub"
    path.write_bytes(b"<html>not a zip</html>" * 100)
    err = _fast(load_book, path)
    assert isinstance(err, CorruptDocumentError) and "not a readable EPUB" in str(err)


def _pdf(objs: list[bytes]) -> bytes:
    """A PDF file of ``objs`` (object i + 1 each) with a correct cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.mark.parametrize(
    "contents",
    [
        b"<< /Length 93 /Filter /FlateDecode >>\nstream\n"
        + b"this is not deflate data at all" * 3
        + b"\nendstream",
        b"[4 0 R]",  # the page's content array contains itself
    ],
    ids=["broken-stream", "content-cycle"],
)
def test_damaged_pdf_is_corrupt_not_ocr(tmp_path: Path, contents: bytes) -> None:
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]
    path = tmp_path / "damaged.pdf"
    path.write_bytes(_pdf([*objs, page + b"/Contents 4 0 R >>", contents, font]))
    with pytest.raises(CorruptDocumentError) as info:
        load_book(path)
    assert "OCR" not in str(info.value) and "damaged" in str(info.value) and str(path) in str(info.value)


def _epub_with(tmp_path: Path, encryption: str) -> Path:
    """A copy of a real shared EPUB with ``META-INF/encryption.xml`` added."""
    src = sorted(SHARED_EPUB.glob("*.epub"))
    if not src:
        pytest.skip("../shared/data/epub is not beside this checkout")
    good = (
        next(p for p in src if "time" in p.name.lower())
        if any("time" in p.name.lower() for p in src)
        else src[0]
    )
    path = tmp_path / "book.epub"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        zout.writestr("META-INF/encryption.xml", encryption)
    return path


def _encryption_xml(algorithm: str, uri: str) -> str:
    return (
        '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
        f'<enc:EncryptionMethod Algorithm="{algorithm}"/>'
        f'<enc:CipherData><enc:CipherReference URI="{uri}"/></enc:CipherData>'
        "</enc:EncryptedData></encryption>"
    )


def test_drm_epub_is_refused(tmp_path: Path) -> None:
    path = _epub_with(
        tmp_path, _encryption_xml("http://www.w3.org/2001/04/xmlenc#aes128-cbc", "OEBPS/ch1.xhtml")
    )
    with pytest.raises(DRMProtectedError) as info:
        load_book(path)
    msg = str(info.value)
    assert "\n" not in msg and "DRM" in msg and "OEBPS/ch1.xhtml" in msg and str(path) in msg


def test_font_obfuscation_is_not_drm(tmp_path: Path) -> None:
    path = _epub_with(tmp_path, _encryption_xml("http://www.idpf.org/2008/embedding", "OEBPS/fonts/a.otf"))
    assert load_book(path).words > 1000


def test_utf16_without_bom_is_text(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes(
        ("CHAPTER I\n\nIt was a dark and stormy night, and the rain fell.\n" * 50).encode("utf-16-le")
    )
    book = load_book(path)
    assert "stormy night" in book.text


def test_nul_after_the_first_4kb_is_binary(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_bytes(b"plain words. " * 1000 + b"\x00\x01\x02binary")
    with pytest.raises(CorruptDocumentError, match="NUL byte at offset 13,000"):
        load_book(path)


def test_password_for_a_non_pdf_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("Some text of a book.\n")
    with pytest.raises(ConfigError, match="password only opens a PDF"):
        load_book(path, password="secret")


def test_binary_reference_is_not_scored(tmp_path: Path) -> None:
    path = tmp_path / "ref.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ScoringError, match="binary"):
        read_text_file(path)


def test_huge_reference_file_is_refused_by_size(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "ref.txt", 2 * 2**30, b"words ")
    err = _fast(read_text_file, path)
    assert isinstance(err, ScoringError) and "INFSUM_MAX_SCORE_MB" in str(err)


def test_long_texts_are_refused_before_quadratic_rouge_l(tmp_path: Path) -> None:
    long = "word " * 200_000  # ~1 MB: minutes of ROUGE-L without the bound
    err = _fast(score, long, ["a short reference"])
    assert isinstance(err, ScoringError) and "200,000 ROUGE tokens" in str(err)
    assert "INFSUM_MAX_SCORE_TOKENS" in str(err)
    err = _fast(score, "a short summary", [long])
    assert isinstance(err, ScoringError) and "reference" in str(err)


def test_cli_damaged_pdf_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """pypdf's own log lines must not print before infsum's message."""
    from typer.testing import CliRunner

    from infsum.cli import app

    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]
    path = tmp_path / "damaged.pdf"
    path.write_bytes(_pdf([*objs, page + b"/Contents 4 0 R >>", b"[4 0 R]", font]))
    result = CliRunner().invoke(app, ["read", str(path)])
    assert result.exit_code == 2
    assert (
        result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "damaged" in result.stderr
    )
