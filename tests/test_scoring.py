"""``infsum score`` against Google's rouge-score called directly, on the SQuALITY dev references."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from infsum.cli import app

runner = CliRunner()
STORIES = ("pg30029", "pg49897", "pg50818", "pg51150")
METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def direct(summary: str, refs: list[str]) -> dict[str, dict[str, float]]:
    """rouge-score itself: stemming on, one sentence per line for Lsum, best reference per metric."""
    scorer = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)

    def lines(text: str) -> str:
        return "\n".join(s for s in re.split(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+", text) if s.strip())

    out = {}
    for m in METRICS:
        best = max((scorer.score(lines(r), lines(summary))[m] for r in refs), key=lambda s: s.fmeasure)
        out[m] = {"precision": best.precision, "recall": best.recall, "fmeasure": best.fmeasure}
    return out


@pytest.mark.shared
@pytest.mark.parametrize("story", STORIES)
@pytest.mark.parametrize("as_summary", [1, 2])
def test_score_matches_rouge_score(shared_dir: Path, story: str, as_summary: int) -> None:
    dev = shared_dir / "data" / "squality" / "dev"
    paths = [dev / f"{story}.ref{i}.txt" for i in range(1, 5)]
    summary = paths.pop(as_summary - 1)
    result = runner.invoke(app, ["score", str(summary), *map(str, paths), "--json"])
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)
    want = direct(summary.read_text(encoding="utf-8"), [p.read_text(encoding="utf-8") for p in paths])
    for m in METRICS:
        for k in ("precision", "recall", "fmeasure"):
            assert round(got[m][k], 4) == round(want[m][k], 4), (m, k)
    f1 = [want[m]["fmeasure"] for m in ("rouge1", "rouge2", "rougeL")]
    assert got["overall"] == pytest.approx((f1[0] * f1[1] * f1[2]) ** (1 / 3), abs=1e-4)


def test_score_json_shape(tmp_path: Path) -> None:
    summary = tmp_path / "s.md"
    summary.write_text("The cat sat on the mat. It was happy.", encoding="utf-8")
    ref = tmp_path / "r.txt"
    ref.write_text("A cat sat on a mat.", encoding="utf-8")
    result = runner.invoke(app, ["score", str(summary), str(ref), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {*METRICS, "overall"}
    for m in METRICS:
        assert set(data[m]) == {"precision", "recall", "fmeasure"}
        assert 0.0 <= data[m]["fmeasure"] <= 1.0
    assert data["rouge1"]["recall"] == pytest.approx(4 / 6)  # cat sat mat + "on" of a cat sat on a mat


def test_score_table_and_errors(tmp_path: Path) -> None:
    summary = tmp_path / "s.md"
    summary.write_text("The cat sat.", encoding="utf-8")
    table = runner.invoke(app, ["score", str(summary), str(summary)])
    assert table.exit_code == 0 and "ROUGE-Lsum" in table.stdout and "1.0000" in table.stdout
    missing = runner.invoke(app, ["score", str(summary), str(tmp_path / "no.txt")])
    assert missing.exit_code == 2
    assert missing.stderr == f"error: {tmp_path / 'no.txt'}: reference file not found; check the path\n"
    no_refs = runner.invoke(app, ["score", str(summary)])
    assert no_refs.exit_code == 2
