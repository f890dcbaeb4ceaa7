"""Standard input and output: ``-`` as BOOK (``--input-format``), ``-o -`` and ``--format md|json|txt``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.cli import app
from infsum.errors import CorruptDocumentError, TooLargeError, UnsupportedFormatError
from infsum.readers import STDIN, load_book, read_stream

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
STORY = (
    "CHAPTER I\n\nThe lighthouse keeper counted the ships every night. He wrote their names in a book.\n\n"
    "CHAPTER II\n\nOne winter a ship came that had no name. The keeper rowed out to meet it.\n"
)


@pytest.mark.parametrize("fmt", ["txt", "epub", "pdf"])
def test_read_stream_reads_every_format_as_its_file_reader_does(fmt: str) -> None:
    path = SAMPLES / fmt / f"in-the-garden.{fmt}"
    book = read_stream(io.BytesIO(path.read_bytes()), fmt)
    from_file = load_book(path)
    assert book.source == STDIN == "-"
    assert book.chapters == from_file.chapters
    assert book.author == from_file.author
    assert book.title == from_file.title


def test_read_stream_markdown_headings_make_chapters() -> None:
    book = read_stream(io.BytesIO(b"# One\n\nFirst words here.\n\n# Two\n\nSecond words here.\n"), "md")
    assert [c.title for c in book.chapters] == ["One", "Two"]


def test_read_stream_errors_say_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsupportedFormatError, match="^standard input: unsupported format 'docx'; give "):
        read_stream(io.BytesIO(b"x"), "docx")
    with pytest.raises(CorruptDocumentError, match="^standard input: not a readable PDF"):
        read_stream(io.BytesIO(b"not a pdf"), "pdf")
    monkeypatch.setenv("INFSUM_MAX_TEXT_MB", "1")
    monkeypatch.setenv("INFSUM_MAX_BOOK_MB", "1")
    with pytest.raises(TooLargeError, match="^standard input: over 1 MB, the largest book infsum reads"):
        read_stream(io.BytesIO(b"a" * (1024 * 1024 + 1)), "txt")


def _lead(*args: str, stdin: bytes | str | None = STORY):
    return runner.invoke(app, [*args, "--strategy", "lead", "--words", "6", "-q"], input=stdin)


def test_dash_reads_the_book_from_standard_input() -> None:
    result = _lead("-", "--format", "txt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "The lighthouse keeper counted the ships\n"
    md = _lead("-")
    assert md.stdout.startswith("# Summary of stdin\n\nThe lighthouse keeper counted the ships\n")


def test_stdin_epub_matches_the_file(tmp_path: Path) -> None:
    epub = SAMPLES / "epub" / "in-the-garden.epub"
    piped = _lead("-", "--input-format", "epub", "--format", "txt", stdin=epub.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == _lead(str(epub), "--format", "txt").stdout


def test_format_json_and_its_alias_json(tmp_path: Path) -> None:
    book = tmp_path / "keeper.txt"
    book.write_text(STORY, encoding="utf-8")
    by_format = json.loads(_lead(str(book), "--format", "json").stdout)
    by_alias = json.loads(_lead(str(book), "--json").stdout)
    (
        by_format.pop("seconds"),
        by_alias.pop("seconds"),
        by_format.pop("peak_rss_mb"),
        by_alias.pop("peak_rss_mb"),
    )
    assert by_format == by_alias and by_format["summary"] == "The lighthouse keeper counted the ships"


def test_out_dash_is_standard_output_and_writes_no_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _lead("-", "-o", "-")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# Summary of stdin\n\n")
    assert list(tmp_path.iterdir()) == []


def test_stdin_with_an_out_folder_writes_stdin_files(tmp_path: Path) -> None:
    result = _lead("-", "-o", str(tmp_path / "out"), "--format", "txt")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stdin.summary.json", "stdin.summary.md"]
    data = json.loads((tmp_path / "out" / "stdin.summary.json").read_text(encoding="utf-8"))
    assert data["input"] == "-" and data["title"] == "stdin"


def test_read_command_takes_standard_input() -> None:
    result = runner.invoke(app, ["read", "-", "--json"], input=STORY)
    assert result.exit_code == 0, result.stderr
    assert [c["words"] for c in json.loads(result.stdout)["chapters"]] == [15, 16]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--input-format", "pdf"], b"plain words", "error: standard input: not a readable PDF"),
        (["--json", "--format", "txt"], STORY, "error: --json asks for --format json, not --format txt"),
        (["--input-format", "docx"], STORY, "Invalid value for '--input-format'"),
        ([], b"\x00\x01binary", "error: standard input: binary data"),
    ],
)
def test_stdin_errors_exit_2(args: list[str], stdin, message: str) -> None:
    result = _lead("-", *args, stdin=stdin)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""


def test_input_format_with_a_file_is_an_error(tmp_path: Path) -> None:
    book = tmp_path / "keeper.txt"
    book.write_text(STORY, encoding="utf-8")
    result = _lead(str(book), "--input-format", "md")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {book}: --input-format is for a book on standard input (BOOK -); a file's suffix gives "
        "its format\n"
    )
