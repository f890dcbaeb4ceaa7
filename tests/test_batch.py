"""The batch runner: finding books and references, writing outputs, logging, resuming, exit codes.

The library tests use a recording fake summarizer: they test batch mechanics only, never the engine.
The CLI tests use the real pipeline with the extractive ``lead`` strategy (no model needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.batch import RESULTS, find_books, find_references, run_batch
from infsum.cli import app
from infsum.errors import EmptyDocumentError
from infsum.pipeline import SummaryResult
from infsum.scoring import score

runner = CliRunner()


class FakeSummarizer:
    """Summarizes a book as its first five words; records every call; fails on chosen books."""

    def __init__(self, *, fail: set[str] = frozenset(), interrupt_after: int | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail = fail
        self.interrupt_after = interrupt_after

    def __call__(self, path: Path, references: list[str], *, progress=None) -> SummaryResult:
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt  # what a Ctrl-C (or a kill) between two books looks like
        self.calls.append((path.name, list(references)))
        if path.name in self.fail:
            raise EmptyDocumentError(f"{path}: no text found in the book; check that it is the right file")
        summary = " ".join(path.read_text(encoding="utf-8").split()[:5])
        return SummaryResult(
            summary=summary, input=str(path), title=None, author=None, words=5, tokens=0, segments=0,
            segment_len=2048, model=None, adapter=None, update="delta", memory=True, strategy="fake",
            device=None, generation={}, seconds={"read": 0.0}, tokens_per_s=0.0, peak_rss_mb=0.0,
            infsum_version="test", rouge=score(summary, references) if references else None,
        )  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """books/a.txt (two references beside it), books/sub/b.md, books/sub/c.txt, books/x/d.txt and
    books/x/d.md (same stem in one folder)."""
    root = tmp_path / "books"
    write(root / "a.txt", "alpha one two three four five six")
    write(root / "a.ref1.txt", "alpha one two")
    write(root / "a.ref2.txt", "alpha three four five")
    write(root / "sub" / "b.md", "beta one two three four five six")
    write(root / "sub" / "c.txt", "gamma one two three four five six")
    write(root / "x" / "d.txt", "delta text one two three four")
    write(root / "x" / "d.md", "delta markdown one two three four")
    write(root / "notes.json", "{}")
    return root


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text(encoding="utf-8").splitlines()]


def test_find_books_skips_references_other_suffixes_and_the_output_folder(library: Path) -> None:
    write(library / "out" / "a.summary.md", "# old output inside the input folder")
    books = [p.relative_to(library).as_posix() for p in find_books(library, library / "out")]
    assert books == ["a.txt", "sub/b.md", "sub/c.txt", "x/d.md", "x/d.txt"]


def test_references_beside_the_book_then_in_refs_dir(library: Path, tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    write(refs / "c.txt", "gamma reference")
    write(refs / "a.ref.txt", "not used: a has references beside it")
    assert [p.name for p in find_references(library / "a.txt", refs)] == ["a.ref1.txt", "a.ref2.txt"]
    assert [p.name for p in find_references(library / "sub" / "c.txt", refs)] == ["c.txt"]
    assert find_references(library / "sub" / "b.md", refs) == []


def test_outputs_keep_subfolders_and_every_book_is_logged(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fake = FakeSummarizer()
    report = run_batch(library, out, summarizer=fake)
    assert not report.failed
    expected = ["a", "sub/b", "sub/c", "x/d.md", "x/d.txt"]  # d.txt and d.md share a folder and a stem
    for stem in expected:
        assert (out / f"{stem}.summary.md").is_file() and (out / f"{stem}.summary.json").is_file()
    assert json.loads((out / "sub/c.summary.json").read_text())["summary"] == "gamma one two three four"
    assert [r["book"] for r in records(out)] == ["a.txt", "sub/b.md", "sub/c.txt", "x/d.md", "x/d.txt"]
    assert all(r["status"] == "ok" for r in records(out))
    assert fake.calls[0] == ("a.txt", ["alpha one two", "alpha three four five"])
    assert records(out)[0]["rouge"]["rouge1"]["recall"] == 1.0  # best over the two references
    assert not list(out.rglob("*.tmp"))


def test_interrupted_batch_resumes_without_loss_or_duplicates(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(library, out, summarizer=FakeSummarizer(interrupt_after=2))
    assert [r["book"] for r in records(out)] == ["a.txt", "sub/b.md"]
    with open(out / RESULTS, "a", encoding="utf-8") as f:
        f.write('{"book": "sub/c.txt", "sta')  # killed in the middle of writing a line
    second = FakeSummarizer()
    report = run_batch(library, out, summarizer=second)
    assert [name for name, _ in second.calls] == ["c.txt", "d.md", "d.txt"]
    assert [o.skipped for o in report.outcomes] == [True, True, False, False, False]
    books = [r["book"] for r in records(out)]
    assert books == ["a.txt", "sub/b.md", "sub/c.txt", "x/d.md", "x/d.txt"]
    assert report.outcomes[0].rouge is not None  # scores of earlier runs come back from the log


def test_a_deleted_output_is_redone(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(library, out, summarizer=FakeSummarizer())
    (out / "sub" / "b.summary.md").unlink()
    again = FakeSummarizer()
    run_batch(library, out, summarizer=again)
    assert [name for name, _ in again.calls] == ["b.md"]


def test_failed_book_is_recorded_and_retried(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_batch(library, out, summarizer=FakeSummarizer(fail={"b.md"}))
    assert [o.book for o in report.failed] == ["sub/b.md"]
    failed = [r for r in records(out) if r["status"] == "error"]
    b = library / "sub" / "b.md"
    assert failed == [
        {"book": "sub/b.md", "status": "error", "seconds": failed[0]["seconds"],
         "message": f"{b}: no text found in the book; check that it is the right file"}
    ]  # fmt: skip
    assert not (out / "sub" / "b.summary.md").exists()
    retry = FakeSummarizer()
    report = run_batch(library, out, summarizer=retry)
    assert [name for name, _ in retry.calls] == ["b.md"] and not report.failed


def test_mean_has_an_interval_from_five_scored_books(tmp_path: Path) -> None:
    root = tmp_path / "books"
    for i in range(5):
        write(root / f"s{i}.txt", f"story {i} words go here and more words follow")
        write(root / f"s{i}.ref.txt", f"story {i} words" + " here" * i)
    report = run_batch(root, tmp_path / "out", summarizer=FakeSummarizer())
    means = report.means
    assert means is not None and means["overall"].ci is not None
    lo, hi = means["rouge1"].ci
    assert lo <= means["rouge1"].mean <= hi
    four = run_batch(root, tmp_path / "out4", summarizer=FakeSummarizer(fail={"s4.txt"}))
    assert four.means["rouge1"].ci is None


def test_cli_batch_exit_codes_table_and_resume(tmp_path: Path) -> None:
    root = tmp_path / "books"
    write(root / "one.txt", "The first book is about a cat who sails to sea in a boat.")
    write(root / "one.ref.txt", "A cat sails to sea.")
    write(root / "two.txt", "The second book is about a dog.")
    write(root / "empty.txt", "   \n")
    out = tmp_path / "out"
    args = ["batch", str(root), "-o", str(out), "--strategy", "lead", "--words", "8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "3 books, 1 failed" in result.stdout and "mean" in result.stdout
    assert (out / "one.summary.md").read_text().startswith("# Summary of one\n\nThe first book is about a")
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 1  # the empty book fails again; the others are not redone
    assert rerun.stdout.count("earlier") == 2
    empty = root / "empty.txt"
    assert (
        rerun.stderr
        == f"failed: empty.txt: {empty}: no text found in the book; check that it is the right file\n"
    )
    assert [r["status"] for r in records(out)] == ["error", "ok", "ok", "error"]
    (root / "empty.txt").unlink()
    assert runner.invoke(app, args).exit_code == 0


def test_cli_batch_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["batch", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (
        result.stderr == f"error: {tmp_path / 'nope'}: no such folder; give the folder that holds the books\n"
    )


def test_a_damaged_results_line_is_set_aside_and_its_book_redone(library: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(library, out, summarizer=FakeSummarizer())
    lines = (out / RESULTS).read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:20] + "\x00garbage"  # a torn write in the middle of the file
    (out / RESULTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    damaged_book = json.loads(lines[0])["book"]  # line 0 stays good
    fake = FakeSummarizer()
    report = run_batch(library, out, summarizer=fake)
    assert not report.failed and len(fake.calls) == 1  # only the book of the damaged line is redone
    assert (out / (RESULTS + ".bad")).read_text(encoding="utf-8").startswith(lines[1][:20])
    books = [r["book"] for r in records(out)]
    assert len(books) == len(set(books)) == 5 and damaged_book in books


def test_one_batch_per_output_folder(library: Path, tmp_path: Path) -> None:
    import os

    from infsum.batch import LOCK
    from infsum.errors import OutputError

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(str(os.getpid()))  # a live owner: this very process
    with pytest.raises(OutputError, match="another infsum batch"):
        run_batch(library, out, summarizer=FakeSummarizer())
    (out / LOCK).write_text("999999999")  # a crashed owner: no such process
    assert not run_batch(library, out, summarizer=FakeSummarizer()).failed
    assert not (out / LOCK).exists()  # released on exit


def test_a_failed_write_stops_the_batch_and_leaves_no_temporary_files(library: Path, tmp_path: Path) -> None:
    from infsum.errors import OutputError

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "b.summary.json").mkdir()  # a folder where a file must go: the write fails
    fake = FakeSummarizer()
    with pytest.raises(OutputError, match="cannot write it"):
        run_batch(library, out, summarizer=fake)
    assert len(fake.calls) < 5  # stopped, not computing and discarding the rest
    assert not list(out.rglob("*.tmp"))
    (out / "sub" / "b.summary.json").rmdir()  # the cause fixed: a rerun resumes and completes
    assert not run_batch(library, out, summarizer=FakeSummarizer()).failed
    assert len({r["book"] for r in records(out) if r["status"] == "ok"}) == 5


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["batch", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--strategy", "lead"]
    )
    assert result.exit_code == 2 and "no books found" in result.stderr


def test_summary_reaches_stdout_when_the_output_cannot_be_written(tmp_path: Path) -> None:
    book = write(tmp_path / "book.txt", "A short story about a lighthouse keeper and his cat. " * 20)
    blocker = write(tmp_path / "file", "not a folder")
    result = runner.invoke(app, [str(book), "--strategy", "lead", "--words", "20", "-o", str(blocker)])
    assert result.exit_code == 2
    assert "lighthouse keeper" in result.stdout  # the summary is not lost
    assert result.stderr.count("\n") == 1 and "cannot write it" in result.stderr


def test_book_text_is_never_rendered_as_markup(tmp_path: Path) -> None:
    book = write(tmp_path / "[bold]odd[/] name.txt", "CHAPTER [/] ONE\n\nSome text of the chapter here.\n")
    result = runner.invoke(app, ["read", str(book)])
    assert result.exit_code == 0, result.output
    assert "CHAPTER [/] ONE" in result.stdout  # literally, not as a closing tag (a MarkupError before)
