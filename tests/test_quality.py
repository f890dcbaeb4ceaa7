"""bench/quality.py: the table's arithmetic and a resumable run directory."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    """The benchmark script as the module ``bench.quality`` (worker processes import it by name)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.quality")


def fake_row(strategy: str, item: str, r1: float, r2: float, rl: float) -> dict:
    f = {"rouge1": r1, "rouge2": r2, "rougeL": rl, "rougeLsum": r1}
    scores = {m: {"precision": v, "recall": v, "fmeasure": v} for m, v in f.items()}
    return {"strategy": strategy, "item": item, "seconds": 2.0, "peak_rss_mb": 100.0, "scores": scores}


def test_table_overall_is_the_mean_of_per_item_geometric_means(quality) -> None:
    rows = [fake_row("a", f"i{k}", 0.4, 0.1, 0.2) for k in range(4)] + [fake_row("b", "i0", 0.5, 0.0, 0.3)]
    a, b = quality.table(rows)
    assert (a["strategy"], a["n"], b["n"]) == ("a", 4, 1)
    assert a["overall"] == pytest.approx(
        100 * math.exp((math.log(0.4) + math.log(0.1) + math.log(0.2)) / 3), abs=0.01
    )
    assert (a["rouge1"], a["rouge2"], a["rougeL"]) == (40.0, 10.0, 20.0)
    assert b["overall"] == 0.0  # a zero ROUGE-2 makes the geometric mean zero
    assert a["overall_ci"] is None  # fewer than five items: no interval


def test_table_has_an_interval_from_five_items(quality) -> None:
    rows = [fake_row("a", f"i{k}", 0.3 + 0.02 * k, 0.05 + 0.01 * k, 0.15) for k in range(5)]
    (entry,) = quality.table(rows)
    lo, hi = entry["overall_ci"]
    assert lo <= entry["overall"] <= hi and lo < hi
    assert entry["seconds"] == 2.0 and entry["peak_rss_mb"] == 100.0
    assert "| a | 5 |" in quality.table_markdown([entry])


def test_rows_without_peak_rss_still_tabulate(quality) -> None:
    rows = [fake_row("a", f"i{k}", 0.4, 0.1, 0.2) for k in range(3)]
    for r in rows[:2]:
        r["peak_rss_mb"] = None  # stored by a run that did not measure it
    (entry,) = quality.table(rows)
    assert entry["peak_rss_mb"] == 100.0  # the mean over the rows that measured it
    (entry,) = quality.table(rows[:2])
    assert entry["peak_rss_mb"] is None
    assert "| 2.00 | - | - | unrecorded |" in quality.table_markdown([entry])


@pytest.mark.parametrize(
    ("strategy", "setting"),
    [
        ("infini", ("infini", True, "default", 70)),
        ("infini-memory-off", ("infini", False, "default", 70)),
        ("infini-untrained", ("infini", True, None, 70)),
        ("infini-whole", ("infini", True, "default", 0)),
    ],
)
def test_infini_controls_change_one_setting_each(quality, monkeypatch, strategy: str, setting: tuple) -> None:
    import infsum.pipeline

    seen = []
    monkeypatch.setattr(infsum.pipeline, "summarize", lambda book, cfg, model=None: seen.append(cfg))
    runner = quality.Runner(quality.ModelSpec())
    monkeypatch.setattr(runner, "loaded", lambda: None)  # the configuration alone is under test
    runner.summarize(strategy, book=None, words=50)
    (cfg,) = seen
    assert (cfg.strategy, cfg.memory.enabled, cfg.adapter, cfg.part_words) == setting
    assert cfg.words == 50


def test_exact_tokens_reach_the_memory_and_the_row(quality, monkeypatch) -> None:
    import infsum.pipeline

    seen = []
    monkeypatch.setattr(infsum.pipeline, "summarize", lambda book, cfg, model=None: seen.append(cfg))
    runner = quality.Runner(quality.ModelSpec(exact_tokens=64))
    monkeypatch.setattr(runner, "loaded", lambda: None)
    runner.summarize("infini-memory-off", book=None, words=50)
    (cfg,) = seen
    assert (cfg.memory.exact_tokens, cfg.memory.enabled) == (64, False)
    assert quality.parse_args(["--run-dir", "r", "--exact-tokens", "64"]).exact_tokens == 64


def test_name_recall_counts_the_reference_names_the_book_has() -> None:
    from bench.name_recall import recall, reference_names

    book = "Anna met Boris in Paris. Later Anna left."
    refs = ("Then Anna meets Boris and Zed.", "In the end Anna leaves Paris.")
    names = reference_names(refs, book)
    assert names == ["Anna", "Boris", "Paris"]  # Zed is not in the book: the reference's slip
    assert recall("Then Anna and Borisov talk.", names) == pytest.approx(1 / 3)  # whole words only
    assert recall("Nobody.", []) == 1.0


def make_dataset(root: Path) -> Path:
    """Two SQuALITY-style stories with two references each, and one books-style folder."""
    words = "The robot walked to the river. It saw a fish there. The fish spoke to the robot."
    for name in ("s1", "s2"):
        (root / f"{name}.txt").write_text(f"{words} {name} ends here.\n", encoding="utf-8")
        (root / f"{name}.ref1.txt").write_text("A robot meets a talking fish.", encoding="utf-8")
        (root / f"{name}.ref2.txt").write_text("A fish speaks to a robot by the river.", encoding="utf-8")
    (root / "b1").mkdir()
    (root / "b1" / "text.txt").write_text(words + "\n", encoding="utf-8")
    (root / "b1" / "summary.txt").write_text("A robot and a fish talk.", encoding="utf-8")
    return root


def test_load_items_reads_both_layouts(quality, tmp_path: Path) -> None:
    items = quality.load_items(str(make_dataset(tmp_path)))
    assert [i.id for i in items] == ["b1", "s1", "s2"]
    assert len(items[1].references) == 2 and items[1].ref_words == 8  # mean of 6 and 9 words, rounded
    assert [i.id for i in quality.load_items(str(tmp_path), limit=1)] == ["b1"]


def test_run_directory_resumes_without_redoing_work(quality, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data, run_dir = make_dataset(tmp_path / "data"), tmp_path / "run"
    argv = ["--data", str(data), "--strategies", "lead", "--run-dir", str(run_dir)]
    assert quality.main(argv) == 0
    files = sorted((run_dir / "items" / "lead").glob("*.json"))
    assert [f.stem for f in files] == ["b1", "s1", "s2"]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    row = json.loads(files[1].read_text())
    assert row["summary"] == "The robot walked to the river. It saw" and row["words_target"] == 8
    assert row["unsupported_names"] == []  # lead quotes the book: it invents no name
    files[2].unlink()  # as if the first run had been interrupted before s2
    assert quality.main(argv) == 0
    assert {f: f.stat().st_mtime_ns for f in files[:2]} == {f: stamps[f] for f in files[:2]}
    assert files[2].is_file()
    table = json.loads((run_dir / "table.json").read_text())
    assert table[0]["strategy"] == "lead" and table[0]["n"] == 3 and table[0]["invented_names"] == 0
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 3
    files[0].unlink()
    assert quality.main([*argv, "--report-only"]) == 0  # tabulates what is stored, runs nothing
    assert not files[0].exists() and json.loads((run_dir / "table.json").read_text())[0]["n"] == 2


def test_items_pick_and_order_and_unknown_ids_exit(quality, tmp_path: Path) -> None:
    data = str(make_dataset(tmp_path))
    assert [i.id for i in quality.load_items(data, only=["s2", "b1"])] == ["s2", "b1"]
    with pytest.raises(SystemExit, match=r"no items \['nope'\]; ids are: b1, s1, s2"):
        quality.load_items(data, only=["s1", "nope"])


def test_tasks_go_item_by_item(quality, tmp_path: Path) -> None:
    items = quality.load_items(str(make_dataset(tmp_path)), limit=2)
    got = [(s, i.id) for s, i in quality.tasks(["lead", "textrank"], items)]
    assert got == [("lead", "b1"), ("textrank", "b1"), ("lead", "s1"), ("textrank", "s1")]


def test_workers_store_the_same_rows_as_one_process(quality, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data")
    base = ["--data", str(data), "--strategies", "lead,textrank"]
    assert quality.main([*base, "--run-dir", str(tmp_path / "one")]) == 0
    assert quality.main([*base, "--run-dir", str(tmp_path / "two"), "--workers", "2"]) == 0

    def rows(run: str) -> list[tuple]:
        lines = (tmp_path / run / "results.jsonl").read_text().splitlines()
        keys = ("strategy", "item", "summary", "workers", "device")
        return [tuple(r[k] for k in keys) for r in map(json.loads, lines)]

    one, two = rows("one"), rows("two")
    assert [r[:3] for r in one] == [r[:3] for r in two] and len(one) == 6
    assert {r[3] for r in one} == {1} and {r[3] for r in two} == {2} and {r[4] for r in two} == {"cpu"}


def test_a_worker_stops_taking_pairs_once_its_parent_is_gone(quality) -> None:
    import queue

    todo: queue.Queue = queue.Queue()
    todo.put(("lead", "a"))
    todo.put(None)
    assert quality.next_task(todo, lambda: True) == ("lead", "a")  # the parent lives: work goes on
    assert quality.next_task(todo, lambda: False) is None  # killed parent: stop, pairs left queued
    assert todo.get_nowait() is None
    checks = iter([True, True, False])  # an empty queue is polled until the parent dies
    assert quality.next_task(todo, lambda: next(checks), poll=0.01) is None


def test_a_failing_pair_is_reported_and_the_rest_still_run(quality, tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    data, run_dir = make_dataset(tmp_path / "data"), tmp_path / "run"
    (data / "s1.txt").write_bytes(b"")  # an empty book: the reader refuses it
    argv = ["--data", str(data), "--strategies", "lead", "--run-dir", str(run_dir)]
    assert quality.main(argv) == 1
    out = capsys.readouterr()
    assert "lead s1" in " ".join(out.out.split()) and "FAILED" in out.out
    assert "1 pair(s) failed" in out.err
    assert sorted(f.stem for f in (run_dir / "items" / "lead").glob("*.json")) == ["b1", "s2"]


def test_versus_pairs_items_and_counts_wins(quality) -> None:
    rows = [fake_row("base", f"i{k}", 0.2, 0.2, 0.2) for k in range(6)]
    rows += [fake_row("new", f"i{k}", 0.3, 0.3, 0.3) for k in range(5)]  # i5 missing: not paired
    rows.append(fake_row("new", "i9", 0.9, 0.9, 0.9))  # no baseline row: not paired
    rows[6] = fake_row("new", "i0", 0.1, 0.1, 0.1)
    (entry,) = quality.versus(rows, "base")
    assert (entry["strategy"], entry["n"], entry["wins"], entry["losses"]) == ("new", 5, 4, 1)
    assert entry["delta"] == pytest.approx((4 * 10 - 10) / 5)
    lo, hi = entry["delta_ci"]
    assert lo <= entry["delta"] <= hi
    assert "| new | 5 | +6.0 [" in quality.versus_markdown([entry], "base")


def test_versus_run_pairs_each_strategy_with_itself_in_the_other_run(quality) -> None:
    rows = [fake_row("lead", f"i{k}", 0.3, 0.3, 0.3) for k in range(5)]
    rows += [fake_row("textrank", f"i{k}", 0.2, 0.2, 0.2) for k in range(5)]
    other = [fake_row("lead", f"i{k}", 0.2, 0.2, 0.2) for k in range(4)]  # i4 missing: not paired
    other += [fake_row("textrank", f"i{k}", 0.2, 0.2, 0.2) for k in range(5)]
    lead, textrank = quality.versus_run(rows, other, "runs/old")
    assert (lead["strategy"], lead["n"], lead["wins"], lead["delta"]) == ("lead", 4, 4, pytest.approx(10.0))
    assert (textrank["strategy"], textrank["n"], textrank["delta"]) == ("textrank", 5, 0)
    assert textrank["wins"] == textrank["losses"] == 0


def test_versus_run_compares_two_stored_runs(quality, tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data")
    argv = ["--data", str(data), "--strategies", "lead"]
    assert quality.main([*argv, "--run-dir", str(tmp_path / "a")]) == 0
    assert quality.main([*argv, "--run-dir", str(tmp_path / "b"), "--versus-run", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "b" / "versus-run.json").read_text())
    assert saved["baseline"] == str(tmp_path / "a")
    (entry,) = saved["rows"]
    assert (entry["strategy"], entry["delta"], entry["wins"], entry["losses"]) == ("lead", 0, 0, 0)
    assert "Overall minus the same strategy in" in capsys.readouterr().out


def test_versus_must_name_a_run_strategy(quality, tmp_path: Path) -> None:
    argv = ["--data", str(make_dataset(tmp_path)), "--strategies", "lead", "--versus", "textrank"]
    with pytest.raises(SystemExit, match="--versus textrank: not among --strategies lead"):
        quality.main([*argv, "--run-dir", str(tmp_path / "run")])


def test_model_strategies_record_device_and_dtype(quality, tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "data").mkdir()
    data, run_dir = make_dataset(tmp_path / "data"), tmp_path / "run"
    argv = ["--data", str(data), "--items", "s1", "--strategies", "infini,truncate-tail,lead"]
    argv += ["--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "bfloat16", "--words", "5"]
    assert quality.main([*argv, "--run-dir", str(run_dir)]) == 0
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    got = [(r["strategy"], r["device"], r["dtype"], r["peak_gpu_mb"]) for r in rows]
    assert got == [
        ("infini", "cpu", "bfloat16", None),
        ("truncate-tail", "cpu", "bfloat16", None),
        ("lead", "cpu", None, None),
    ]


def long_book(root: Path) -> Path:
    """A books-style folder whose book has 50 sentences of 20 words, no word shared between two."""
    sentences = [f"W{i}x0 " + " ".join(f"w{i}x{j}" for j in range(1, 20)) + "." for i in range(50)]
    (root / "long").mkdir(parents=True)
    (root / "long" / "text.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")
    (root / "long" / "summary.txt").write_text(sentences[49], encoding="utf-8")
    return root


def test_rows_and_table_carry_coverage_and_invented_names(quality, tmp_path: Path) -> None:
    data, run_dir = long_book(tmp_path / "data"), tmp_path / "run"
    assert quality.main(["--data", str(data), "--strategies", "lead", "--run-dir", str(run_dir)]) == 0
    row = json.loads((run_dir / "items" / "lead" / "long.json").read_text())
    assert row["coverage"]["histogram"] == [1] + [0] * 9  # lead: the book's first 20 words
    (entry,) = json.loads((run_dir / "table.json").read_text())
    assert entry["coverage"] == [100.0] + [0.0] * 9 and entry["last_tenth"] == 0.0
    assert entry["invented_names"] == 0
    header, _, line = (run_dir / "table.md").read_text().splitlines()
    assert "| invented names | last 10% | sentences by tenth % |" in header
    assert "| 0.00 | 0.0 | 100 0 0 0 0 0 0 0 0 0 |" in line


def test_item_files_stored_without_names_or_coverage_still_aggregate(quality, tmp_path: Path) -> None:
    data, run_dir = long_book(tmp_path / "data"), tmp_path / "run"
    argv = ["--data", str(data), "--strategies", "lead", "--run-dir", str(run_dir)]
    assert quality.main(argv) == 0
    path = run_dir / "items" / "lead" / "long.json"
    old = json.loads(path.read_text())
    del old["coverage"], old["unsupported_names"]  # as an older run stored it
    sentences = (data / "long" / "text.txt").read_text().split(". ")
    old["summary"] = f"{sentences[-1].strip()} Then Zorblax left. It rained on Quibble."
    path.write_text(json.dumps(old))
    before = path.read_text()
    assert quality.main([*argv, "--report-only"]) == 0
    assert path.read_text() == before  # the item file is left as it was
    (entry,) = json.loads((run_dir / "table.json").read_text())
    assert entry["invented_names"] == 2  # Zorblax and Quibble, from the stored summary and the book
    assert entry["coverage"] == [0.0] * 9 + [33.3] and entry["last_tenth"] == 33.3  # 1 of 3 sentences
    (row,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert row["unsupported_names"] == ["Zorblax", "Quibble"] and row["coverage"]["unmatched"] == 2
