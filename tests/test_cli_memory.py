"""The memory commands of the CLI, ``infsum passkey`` and ``infsum train``, on the tiny random model:
exit codes, JSON shapes, tables, the files written, and a bad option each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.cli import app

runner = CliRunner()
PROSE = " ".join(
    f"The keeper of lighthouse {i} counted the ships every night and wrote their names in a book."
    for i in range(40)
)


def _unwrapped(text: str) -> str:
    """``text`` without whitespace: rich wraps a title (paths too) to its table's width."""
    return "".join(text.split())


def _passkey(tiny_model_dir: Path, *args: str):
    base = ["passkey", "--model", str(tiny_model_dir), "--no-adapter", "--device", "cpu"]
    small = ["--lengths", "256", "--segment-len", "128", "--trials", "1"]
    return runner.invoke(app, [*base, *small, *args])


def test_passkey_json_has_a_cell_per_length_and_depth(tiny_model_dir: Path) -> None:
    result = _passkey(tiny_model_dir, "--depths", "0,1", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["table"]) == {"256"} and set(data["table"]["256"]) == {"0.0", "1.0"}
    assert data["adapter"] is None and data["memory"] is True
    assert data["segment_len"] == 128 and data["trials"] == 1 and len(data["results"]) == 2
    assert {"mean", "mean_earlier_segments", "lengths", "depths"} <= set(data)


def test_passkey_table_names_the_settings(tiny_model_dir: Path) -> None:
    result = _passkey(tiny_model_dir, "--depths", "0.5", "--memory", "off", "--memory-variant", "l2")
    assert result.exit_code == 0, result.stderr
    title = "passkey accuracy (1 trials per cell, memory off, no adapter)"
    assert _unwrapped(title) in _unwrapped(result.stdout)
    assert "depth 0.5" in result.stdout and "256" in result.stdout


def test_passkey_bad_options_exit_2(tiny_model_dir: Path) -> None:
    variant = _passkey(tiny_model_dir, "--memory-variant", "bogus")
    assert variant.exit_code == 2
    assert "unknown memory variant 'bogus': choose one of paper," in variant.stderr
    lengths = _passkey(tiny_model_dir, "--lengths", "4x")
    assert lengths.exit_code == 2
    assert "'4x' is not a comma-separated list of token counts" in lengths.stderr


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "keeper.txt"
    path.write_text(PROSE, encoding="utf-8")
    return path


def _train(tiny_model_dir: Path, corpus: Path, out: Path, *args: str):
    base = ["train", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--mix", "1,0,0"]
    small = ["--steps", "1", "--batch-size", "1", "--segment-len", "16", "--segments", "2-2"]
    return runner.invoke(app, [*base, *small, "--device", "cpu", "-o", str(out), *args])


def test_train_json_is_the_adapter_card(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.safetensors"
    result = _train(
        tiny_model_dir, corpus, out, "--memory-variant", "l2", "--exact-tokens", "8", "--json", "-q"
    )
    assert result.exit_code == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["steps"] == 1 and card["memory"]["variant"] == "l2" and card["memory"]["segment_len"] == 16
    assert card["memory"]["exact_tokens"] == 8
    assert card["data"]["corpus"] == ["keeper.txt"] and card["data"]["mix"]["lm"] == 1.0
    assert out.is_file()
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == card


def test_train_table_says_what_it_wrote(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.safetensors"
    result = _train(tiny_model_dir, corpus, out, "-q")
    assert result.exit_code == 0, result.stderr
    assert _unwrapped(f"wrote {out} (+ .json card)") in _unwrapped(result.stdout)
    assert "last loss" in result.stdout
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_train_bad_segments_exit_2(tiny_model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    result = _train(tiny_model_dir, corpus, tmp_path / "c.safetensors", "--segments", "3")
    assert result.exit_code == 2
    assert "--segments '3': give MIN-MAX, e.g. 2-4" in result.stderr
    assert not (tmp_path / "c.safetensors").exists()
