"""The infsum command line: routing, options, exit codes and the exact messages a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum import __version__
from infsum.cli import app
from infsum.errors import BookNotFoundError

runner = CliRunner()
STORY = (
    "CHAPTER I\n\nThe lighthouse keeper counted the ships every night. He wrote their names in a book.\n\n"
    "CHAPTER II\n\nOne winter a ship came that had no name. The keeper rowed out to meet it.\n"
)


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "keeper.txt"
    path.write_text(STORY, encoding="utf-8")
    return path


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"infsum {__version__}\n"


def test_help_shows_commands_and_examples() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for text in ("read", "score", "batch", "infsum batch books/ -o out/", "Examples:"):
        assert text in result.stdout
    assert "BOOK [OPTIONS] | COMMAND [ARGS]..." in result.stdout
    commands = result.stdout.split("Commands:")[1].split("Examples:")[0]
    assert "summarize" not in commands  # the main job is hidden: it runs as `infsum BOOK`


def test_missing_book_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    result = runner.invoke(app, [str(missing)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: no such file; check the path\n"
    assert result.stdout == ""


def test_unsupported_suffix(tmp_path: Path) -> None:
    doc = tmp_path / "notes.docx"
    doc.write_text("hello", encoding="utf-8")
    result = runner.invoke(app, [str(doc), "--strategy", "lead"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {doc}: unsupported format '.docx'; give an .epub, .pdf, .txt or .md file\n"
    )


@pytest.mark.parametrize(
    "args",
    [["--update", "sideways"], ["--words", "0"], ["--bogus"], ["--memory", "maybe"], ["--strategy", "x"]],
)
def test_bad_option_exits_2(book: Path, args: list[str]) -> None:
    result = runner.invoke(app, [str(book), *args])
    assert result.exit_code == 2
    assert "Error:" in result.stderr


def test_empty_reference_fails_before_the_model_runs(book: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.ref.txt"
    empty.write_text("  \n", encoding="utf-8")
    result = runner.invoke(app, [str(book), "--ref", str(empty), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.stderr == f"error: {empty}: reference file is empty; give a file with text in it\n"


def test_debug_env_reraises(tmp_path: Path) -> None:
    result = runner.invoke(app, [str(tmp_path / "missing.txt")], env={"INFSUM_DEBUG": "1"})
    assert isinstance(result.exception, BookNotFoundError)


def test_options_may_come_before_the_book(book: Path) -> None:
    result = runner.invoke(app, ["--strategy", "lead", "--words", "5", str(book), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["summary"] == "The lighthouse keeper counted the"


def test_lead_strategy_writes_markdown_and_json(book: Path, tmp_path: Path) -> None:
    ref = tmp_path / "keeper.ref.txt"
    ref.write_text("A lighthouse keeper rows out to a ship with no name.", encoding="utf-8")
    out = tmp_path / "out"
    args = [str(book), "--strategy", "lead", "--words", "6", "-o", str(out), "--ref", str(ref), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("# Summary of keeper\n\nThe lighthouse keeper counted the ships\n")
    assert (out / "keeper.summary.md").read_text(encoding="utf-8") + "\n" == result.stdout
    data = json.loads((out / "keeper.summary.json").read_text(encoding="utf-8"))
    assert data["summary"] == "The lighthouse keeper counted the ships"
    assert data["strategy"] == "lead" and data["model"] is None and data["words"] == 31
    assert set(data["rouge"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "overall"}
    assert "ROUGE-Lsum" in result.stderr  # the table goes to stderr, the summary alone to stdout


def test_read_json_keys(book: Path) -> None:
    result = runner.invoke(app, ["read", str(book), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {"title", "author", "words", "chapters"} <= set(data)
    assert data["words"] == 31
    assert [c["words"] for c in data["chapters"]] == [15, 16]
    assert all(set(c) == {"title", "words"} for c in data["chapters"])


def test_read_table_and_text(book: Path) -> None:
    table = runner.invoke(app, ["read", str(book)])
    assert table.exit_code == 0
    assert "total" in table.stdout and "31" in table.stdout
    text = runner.invoke(app, ["read", str(book), "--text"])
    assert text.exit_code == 0
    assert text.stdout.startswith("The lighthouse keeper counted the ships every night.")
    both = runner.invoke(app, ["read", str(book), "--text", "--json"])
    assert both.exit_code == 2


def test_infini_summary_json_has_every_key(book: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.safetensors"
    args = [str(book), "--model", str(tiny_model_dir), "--segment-len", "16", "--words", "5", "--json"]
    result = runner.invoke(app, [*args, "--save-state", str(state)])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    keys = {
        "summary", "input", "title", "author", "words", "tokens", "segments", "segment_len", "model",
        "update", "seconds", "tokens_per_s", "peak_rss_mb", "infsum_version", "rouge",
    }  # fmt: skip
    assert keys <= set(data)
    assert data["input"] == str(book) and data["model"] == str(tiny_model_dir)
    assert data["segments"] == -(-data["tokens"] // 16) and data["tokens"] > 40
    assert data["adapter"] is None and data["rouge"] is None  # no shipped adapter for a random model
    assert set(data["seconds"]) == {"read", "load", "stream", "generate"}
    assert data["generation"]["max_new_tokens"] == 8
    assert state.is_file()
