"""What the CLI shows of the ``infsum`` logger: warnings by default, info with -v, nothing with
--quiet; one plain line each, and logging left as it was found after the command."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import pytest
from ebooklib import epub
from typer.testing import CliRunner

from infsum.cli import app

runner = CliRunner()
XHTML = '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head><body>{}</body></html>'


@pytest.fixture
def cp1252_book(tmp_path: Path) -> Path:
    path = tmp_path / "cafe.txt"
    path.write_bytes("Caf\u00e9 ol\u00e9\n\nThe keeper counted the ships.\n".encode("cp1252"))
    return path


@pytest.fixture
def broken_epub(tmp_path: Path) -> Path:
    """An EPUB whose second chapter is not XHTML: the reader skips it with a warning."""
    book = epub.EpubBook()
    book.set_identifier("broken")
    book.set_title("Broken")
    chapters = []
    for i, body in enumerate(("<p>The keeper counted the ships.</p>", "<p>Lost.</p>"), 1):
        item = epub.EpubHtml(title=f"Chapter {i}", file_name=f"ch{i}.xhtml", lang="en")
        item.content = XHTML.format(body)
        book.add_item(item)
        chapters.append(item)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = chapters
    good = tmp_path / "good.epub"
    epub.write_epub(str(good), book)
    buf = io.BytesIO()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(
                info, b"\x00\x01 not xml <<<" if info.filename.endswith("ch2.xhtml") else src.read(info)
            )
    path = tmp_path / "broken.epub"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("flag", ["-v", "-vv", "--verbose"])
def test_verbose_shows_info_lines(cp1252_book: Path, flag: str) -> None:
    result = runner.invoke(app, [flag, "read", str(cp1252_book), "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"info: {cp1252_book}: not UTF-8, read as Windows-1252\n"


def test_without_verbose_info_is_hidden(cp1252_book: Path) -> None:
    result = runner.invoke(app, ["read", str(cp1252_book), "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""


def test_verbose_goes_before_a_book(cp1252_book: Path) -> None:
    result = runner.invoke(app, ["-v", str(cp1252_book), "--strategy", "lead", "--words", "3"])
    assert result.exit_code == 0, result.stderr
    assert "read as Windows-1252" in result.stderr
    assert result.stdout.startswith("# Summary of Caf\u00e9 ol\u00e9\n\nThe keeper counted\n")


@pytest.mark.parametrize("where", ["after the book", "after a command"])
def test_verbose_may_come_after_the_book_or_command(cp1252_book: Path, where: str) -> None:
    if where == "after the book":
        args = [str(cp1252_book), "--strategy", "lead", "--words", "3", "-v"]
    else:
        args = ["read", str(cp1252_book), "--json", "--verbose"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"info: {cp1252_book}: not UTF-8, read as Windows-1252\n"


def test_a_summarize_run_shows_warnings_and_quiet_hides_them(broken_epub: Path) -> None:
    args = [str(broken_epub), "--strategy", "lead", "--words", "3"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.stderr
    assert loud.stderr == f"warning: {broken_epub}: ch2.xhtml is not readable XHTML; skipped\n"
    quiet = runner.invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout == loud.stdout


def test_logging_is_left_as_found(cp1252_book: Path) -> None:
    logger = logging.getLogger("infsum")
    before = (logger.level, list(logger.handlers))
    for args in (["-vv", "read", str(cp1252_book)], [str(cp1252_book), "--strategy", "lead", "-q"]):
        assert runner.invoke(app, args).exit_code == 0
        assert (logger.level, list(logger.handlers)) == before
