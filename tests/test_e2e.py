"""End to end: the real default model (fetched on first use) summarizes the text sample, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sample_with_reference() -> tuple[Path, Path]:
    """The text sample under samples/txt and its reference summary ``<stem>.ref.txt``."""
    books = [
        p
        for p in sorted((ROOT / "samples" / "txt").glob("*.txt"))
        if not re.search(r"\.ref\d*\.txt$", p.name)
    ]
    if not books:
        pytest.fail("samples/txt holds no text sample: the README demo needs one")
    ref = books[0].with_name(f"{books[0].stem}.ref.txt")
    if not ref.is_file():
        pytest.fail(f"{ref} is missing: every sample needs its reference summary")
    return books[0], ref


@pytest.mark.slow
def test_default_model_summarizes_the_text_sample(tmp_path: Path) -> None:
    book, ref = sample_with_reference()
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "infsum",
        str(book),
        "--words",
        "120",
        "-o",
        str(out),
        "--ref",
        str(ref),
        "--json",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data == json.loads((out / f"{book.stem}.summary.json").read_text(encoding="utf-8"))
    assert data["model"] == "smollm2-135m-instruct" and data["strategy"] == "infini"
    assert data["tokens"] > data["words"] and data["segments"] == -(-data["tokens"] // 2048)
    assert data["summary_words"] >= 30, data["summary"]
    assert data["rouge"]["rouge1"]["fmeasure"] > 0.15, data["summary"]
    md = (out / f"{book.stem}.summary.md").read_text(encoding="utf-8")
    assert md.startswith("# Summary of ") and data["summary"] in md
