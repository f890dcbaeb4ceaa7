"""Progress reports: the events a summary run emits, and the counters the engine and strategies call.

Two kinds, two names. A ``Progress`` callback receives ``Step`` events (the pipeline, the strategies
and the batch runner emit them; the CLI renders them). A ``Counter`` callback receives ``(done,
total)`` in the unit of one operation (tokens read by the engine, passkey trials).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One progress report: ``stage`` is "read", "load", "stream", "generate" (or "book" in a batch);
    ``done`` of ``total`` in the stage's unit (tokens for stream and generate); ``detail`` is the
    chapter being read, the book of a batch, or a model-loading message."""

    stage: str
    done: int
    total: int
    detail: str | None = None


Progress = Callable[[Step], None]
Counter = Callable[[int, int], None]


def ignore(step: Step) -> None:
    """A ``Progress`` that reports nowhere."""
