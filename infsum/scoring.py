"""ROUGE scoring with Google's rouge-score, in the conventions of the Infini-attention paper.

ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum; Porter stemming on; for ROUGE-Lsum every sentence goes on
its own line; with several references the best score per metric (rouge-score's ``score_multi``);
``overall`` is the geometric mean of the ROUGE-1, ROUGE-2 and ROUGE-L F1.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rouge_score import rouge_scorer

from . import limits
from .errors import ScoringError
from .sentences import split_sentences

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_TOKEN = re.compile(r"[a-z0-9]+")  # what rouge-score's tokenizer counts (after lower-casing)


@dataclass(frozen=True)
class Rouge:
    """Precision, recall and F1 of one ROUGE metric, each in 0..1."""

    precision: float
    recall: float
    fmeasure: float


@dataclass(frozen=True)
class RougeScores:
    """ROUGE-1/2/L/Lsum of one summary, best over its references, and their geometric mean."""

    rouge1: Rouge
    rouge2: Rouge
    rougeL: Rouge
    rougeLsum: Rouge

    @property
    def overall(self) -> float:
        """Geometric mean of the ROUGE-1, ROUGE-2 and ROUGE-L F1 (0 if any is 0)."""
        return geometric_mean([self.rouge1.fmeasure, self.rouge2.fmeasure, self.rougeL.fmeasure])

    def to_dict(self) -> dict:
        """``{"rouge1": {"precision", "recall", "fmeasure"}, ..., "overall": float}``."""
        out: dict = {m: vars(getattr(self, m)).copy() for m in METRICS}
        out["overall"] = self.overall
        return out


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of non-negative values; 0 when any value is 0."""
    if not values or min(values) <= 0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


_SCORER: rouge_scorer.RougeScorer | None = None


def _scorer() -> rouge_scorer.RougeScorer:
    global _SCORER  # built once: constructing the Porter stemmer is not free
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(list(METRICS), use_stemmer=True)
    return _SCORER


def score(summary: str, references: Sequence[str]) -> RougeScores:
    """Score ``summary`` against one or more references; the best reference wins per metric."""
    refs = [r for r in references if r.strip()]
    if not refs:
        raise ScoringError("no non-empty reference summary to score against")
    _check_tokens(summary, "summary")
    for r in refs:
        _check_tokens(r, "reference")
    # ROUGE-Lsum reads one sentence per line
    lines = ["\n".join(split_sentences(r)) for r in refs]
    result = _scorer().score_multi(lines, "\n".join(split_sentences(summary)))
    return RougeScores(
        **{m: Rouge(result[m].precision, result[m].recall, result[m].fmeasure) for m in METRICS}
    )


def _check_tokens(text: str, what: str, path: Path | None = None) -> None:
    """Refuse a text over ``MAX_SCORE_TOKENS`` ROUGE tokens: ROUGE-L's work is quadratic in length."""
    n, limit = len(_TOKEN.findall(text.lower())), limits.get("MAX_SCORE_TOKENS")
    if n > limit:
        name = f"{path}: " if path else ""
        raise ScoringError(
            f"{name}the {what} has {n:,} ROUGE tokens, over the {limit:,} that can be scored in "
            f"bounded time; score a summary, not a book ({limits.raise_hint('MAX_SCORE_TOKENS', n)})"
        )


def read_text_file(path: str | Path, what: str = "reference") -> str:
    """Read a UTF-8 summary or reference file, with a one-line error when it is missing, empty,
    binary, or over the ``MAX_SCORE_MB`` / ``MAX_SCORE_TOKENS`` bounds of ``infsum.limits``."""
    p = Path(path)
    if not p.is_file():
        raise ScoringError(f"{p}: {what} file not found; check the path")
    if over := limits.over_mb("MAX_SCORE_MB", p.stat().st_size):
        need, limit = over
        raise ScoringError(
            f"{p}: {what} file is {need} MB, over the {limit} MB limit for scoring; "
            f"{limits.raise_hint('MAX_SCORE_MB', need)}"
        )
    raw = p.read_bytes()
    if b"\x00" in raw:
        raise ScoringError(f"{p}: {what} file is binary data, not text; give a UTF-8 text file")
    text = raw.decode("utf-8-sig", errors="replace")
    _check_tokens(text, what, p)
    if not text.strip():
        raise ScoringError(f"{p}: {what} file is empty; give a file with text in it")
    return text


def score_files(summary: str | Path, references: Sequence[str | Path]) -> RougeScores:
    """Score a summary file against reference files."""
    return score(read_text_file(summary, "summary"), [read_text_file(r) for r in references])


def bootstrap_ci(
    values: Sequence[float], *, n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items)."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(values[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    lo = means[int((1 - level) / 2 * n)]
    hi = means[min(n - 1, int((1 + level) / 2 * n))]
    return lo, hi


@dataclass(frozen=True)
class MetricSummary:
    """Mean of one metric over items, with a bootstrap interval when there are enough items."""

    mean: float
    ci: tuple[float, float] | None


def summarize_scores(scores: Sequence[RougeScores], *, min_for_ci: int = 5) -> dict[str, MetricSummary]:
    """Mean F1 of each metric and of ``overall`` over items; a 95% bootstrap CI from five items up."""
    columns = {m: [getattr(s, m).fmeasure for s in scores] for m in METRICS}
    columns["overall"] = [s.overall for s in scores]
    out = {}
    for name, vals in columns.items():
        ci = bootstrap_ci(vals) if len(vals) >= min_for_ci else None
        out[name] = MetricSummary(sum(vals) / len(vals), ci)
    return out
