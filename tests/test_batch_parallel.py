"""``infsum batch --parallel K``: books streamed side by side (``Summarizer.read_together``) give the
summaries that one book at a time gives, resume like any batch, and refuse what cannot stream
together; on the tiny random model (the summaries are nonsense: the plumbing is what is tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.batch import RESULTS, run_batch
from infsum.cli import app
from infsum.config import MemoryConfig, SummarizeConfig
from infsum.models import load_model
from infsum.pipeline import Summarizer
from infsum.readers import load_book

runner = CliRunner()
SEG = 32
WORDS = ("lamp", "ship", "harbour", "keeper", "storm", "night", "rope", "gull", "tide", "bell")


def _story(n: int, seed: int) -> str:
    """n sentences of a few words: books of different lengths, so rows finish at different times."""
    return " ".join(
        f"The {WORDS[(seed + i) % 10]} met the {WORDS[(3 * i + seed) % 10]} again." for i in range(n)
    )


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """Five books, 2 to 40 sentences (one shorter than a segment), one that cannot be read."""
    root = tmp_path / "books"
    root.mkdir()
    for name, n in (("a", 40), ("b", 2), ("c", 25), ("d", 12), ("e", 33)):
        (root / f"{name}.txt").write_text(_story(n, len(name) + n), encoding="utf-8")
    (root / "e.ref.txt").write_text(_story(5, 1), encoding="utf-8")
    (root / "z.txt").write_text("   \n", encoding="utf-8")  # no text: an error record, the rest goes on
    return root


def _cfg(tiny_model_dir: Path, **kw) -> SummarizeConfig:
    return SummarizeConfig(model=str(tiny_model_dir), words=8, memory=MemoryConfig(segment_len=SEG), **kw)


def test_parallel_summaries_equal_one_at_a_time(
    library: Path, tmp_path: Path, loaded, tiny_model_dir
) -> None:
    cfg = _cfg(tiny_model_dir)
    one = run_batch(library, tmp_path / "one", summarizer=Summarizer(cfg, model=loaded), shard=None)
    three = run_batch(library, tmp_path / "three", summarizer=Summarizer(cfg, model=loaded), parallel=3)
    assert [o.book for o in three.outcomes] == [o.book for o in one.outcomes]  # in book order
    assert [o.status for o in three.outcomes] == ["ok"] * 5 + ["error"]
    assert "no text" in three.outcomes[-1].message
    for name in "abcde":
        a = json.loads((tmp_path / "one" / f"{name}.summary.json").read_text())
        b = json.loads((tmp_path / "three" / f"{name}.summary.json").read_text())
        assert b["summary"] == a["summary"] and b["tokens"] == a["tokens"] and b["segments"] == a["segments"]
        assert (a["parallel"], b["parallel"]) == (1, 3)
        assert b["seconds"]["stream"] >= 0.0
    assert three.outcomes[4].rouge is not None  # e.ref.txt was found and scored


def test_parallel_batch_resumes_without_redoing_books(
    library: Path, tmp_path: Path, loaded, tiny_model_dir
) -> None:
    out = tmp_path / "out"
    cfg = _cfg(tiny_model_dir)
    run_batch(library, out, summarizer=Summarizer(cfg, model=loaded), parallel=2)
    (out / "c.summary.md").unlink()  # a lost output is redone, nothing else
    report = run_batch(library, out, summarizer=Summarizer(cfg, model=loaded), parallel=2)
    redone = [o.book for o in report.outcomes if not o.skipped]
    assert redone == ["c.txt", "z.txt"]  # z.txt failed before, so it is retried
    records = [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]
    assert sorted(r["book"] for r in records if r["status"] == "ok") == [
        "a.txt", "b.txt", "c.txt", "c.txt", "d.txt", "e.txt"
    ]  # fmt: skip


def test_streamed_seconds_and_order(tiny_model_dir, loaded, library: Path) -> None:
    summarizer = Summarizer(_cfg(tiny_model_dir), model=loaded)
    books = [load_book(library / f"{n}.txt") for n in "abcde"]
    got = list(summarizer.read_together(iter(books), 2))
    assert sorted(s.index for s in got) == [0, 1, 2, 3, 4] and {s.rows for s in got} == {2}
    assert got[0].index == 1  # two sentences: shorter than a segment, back before any forward
    assert all(s.seconds >= 0 for s in got)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "lead", "--parallel", "2"], "strategy 'lead' does not stream them"),
        (["--chapters", "--parallel", "2"], "--chapters writes notes while each book streams"),
        (["--parallel", "0"], "Invalid value for '--parallel'"),
    ],
)
def test_cli_parallel_errors_exit_2(library: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["batch", str(library), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o" / RESULTS).exists()


def test_cli_batch_parallel(library: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "o"
    args = ["batch", str(library), "-o", str(out), "--model", str(tiny_model_dir), "--segment-len", str(SEG)]
    result = runner.invoke(app, [*args, "--words", "8", "--parallel", "4", "-q"])
    assert result.exit_code == 1, result.output  # z.txt has no text
    assert "failed: z.txt" in result.output
    assert json.loads((out / "a.summary.json").read_text())["parallel"] == 4


def test_with_a_store_books_stream_one_at_a_time(tiny_model_dir, loaded, library: Path) -> None:
    memory = MemoryConfig(segment_len=SEG, exact_tokens=4)
    summarizer = Summarizer(SummarizeConfig(model=str(tiny_model_dir), words=8, memory=memory), model=loaded)
    got = list(summarizer.read_together([load_book(library / f"{n}.txt") for n in "ace"], 3))
    assert [s.index for s in got] == [0, 1, 2] and {s.rows for s in got} == {1}
