"""A batch split across processes by rank: each book in one process, every process resumable, one
merged results.jsonl with each book exactly once (issue 14). The processes run the extractive
``lead`` strategy (no model): the tests check the sharding, not the engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_batch import FakeSummarizer, write

from infsum.batch import RESULTS, Shard, find_books, merge_parts, run_batch
from infsum.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
N_BOOKS = 5


@pytest.fixture
def books(tmp_path: Path) -> Path:
    folder = tmp_path / "books"
    for i in range(N_BOOKS):
        write(folder / f"b{i}.txt", f"Book {i} begins here. It has a second sentence. And a third one.")
    return folder


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS).read_text(encoding="utf-8").splitlines()]


def _batch(books: Path, out: Path, rank: int, world: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "WORLD_SIZE": str(world)}
    cmd = [sys.executable, "-m", "infsum", "batch", str(books), "-o", str(out), "--strategy", "lead", "-q"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_shard_from_the_launchers_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Shard.from_env() == Shard(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    shard = Shard.from_env()
    assert shard == Shard(3, 4, 1)
    assert [i for i, _ in shard.take([Path(f"{i}") for i in range(10)])] == [3, 7]
    assert shard.results_name == "results.rank3-of-4.jsonl" and shard.lock_name.endswith("rank3-of-4.lock")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK 4 is not below WORLD_SIZE 4"):
        Shard.from_env()


def test_two_processes_share_the_books_and_merge_one_results_file(books: Path, tmp_path: Path):
    out = tmp_path / "out"
    procs = [_batch(books, out, rank, 2) for rank in (0, 1)]  # at the same time
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    records = _records(out)
    assert [r["book"] for r in records] == [f"b{i}.txt" for i in range(N_BOOKS)]  # each once, in order
    assert all(r["status"] == "ok" for r in records)
    assert all((out / f"b{i}.summary.md").is_file() for i in range(N_BOOKS))
    assert not list(out.glob("results.rank*")) and not list(out.glob(".infsum-batch*.lock"))
    # a rerun of both does nothing again and keeps one record per book
    procs = [_batch(books, out, rank, 2) for rank in (0, 1)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert _records(out) == records


def test_an_unfinished_shard_is_resumed_and_merged_by_the_last_process(books: Path, tmp_path: Path):
    out = tmp_path / "out"
    everything = [b.relative_to(books).as_posix() for b in find_books(books, out)]
    first = FakeSummarizer(interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):  # rank 0 of 2 killed after its first book
        run_batch(books, out, summarizer=first, shard=Shard(0, 2))
    run_batch(books, out, summarizer=FakeSummarizer(), shard=Shard(1, 2))
    assert not (out / RESULTS).exists()  # rank 0's books are not all done: nothing merged yet
    again = FakeSummarizer()
    report = run_batch(books, out, summarizer=again, shard=Shard(0, 2))
    assert [c[0] for c in again.calls] == ["b2.txt", "b4.txt"]  # b0 was done before the kill
    assert [o.skipped for o in report.outcomes] == [True, False, False]
    assert [r["book"] for r in _records(out)] == everything
    assert merge_parts(out, everything, 2)  # merging again changes nothing
    assert [r["book"] for r in _records(out)] == everything


def test_a_sharded_rerun_skips_books_done_by_a_single_process_run(books: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_batch(books, out, summarizer=FakeSummarizer(), shard=Shard())
    again = [FakeSummarizer(), FakeSummarizer()]
    for rank in (0, 1):
        assert all(
            o.skipped for o in run_batch(books, out, summarizer=again[rank], shard=Shard(rank, 2)).outcomes
        )
    assert not again[0].calls and not again[1].calls
    assert len(_records(out)) == N_BOOKS


def test_accelerate_launch_runs_a_sharded_batch(books: Path, tmp_path: Path):
    """``accelerate launch -m infsum batch`` with two CPU processes, as the training test launches."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert launcher, "the accelerate launcher is missing: pip install -e ."
    out = tmp_path / "out"
    cmd = [
        launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "infsum", "batch", str(books), "-o", str(out), "--strategy", "lead", "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["book"] for r in _records(out)] == [f"b{i}.txt" for i in range(N_BOOKS)]
