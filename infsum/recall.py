"""The cross-segment recall task: a tiny random Llama trained from scratch must carry a fact through memory.

Learnability on the CPU (issue 11): if a change stops gradients reaching the memory writes, freezes
the gates or leaves the memory storing or reading nothing, a tiny model trained by
``infsum.training.train`` on this task no longer learns it (docs/learnability.md). A sample is
``segments`` segments of synthetic ids:

- segment 1: random filler ids with ``pairs`` key -> value pairs (``k v``, two adjacent ids) at random
  places, the keys distinct, each value drawn uniformly and independently of everything else;
- segments 2 .. n-1: filler only;
- the last segment: filler, then ``QUERY k v`` at its very end, ``k`` one of the stored keys; only
  ``v`` is scored.

Keys, values, the query marker and filler use disjoint ids, and nothing outside segment 1 depends
on the values. So the answer is not in the last segment: segments talk only through the Infini
memory, and without it (memory off, or M and z zeroed before the last segment) every prediction is
independent of the value, whose expected accuracy is at most ``1 / values`` (chance). With the
memory the model can learn it exactly.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from infsum.config import TrainConfig
from infsum.engine import InfiniModel, MemoryState
from infsum.errors import ConfigError
from infsum.training import TrainProgress, train
from infsum.training_data import IGNORE, Example

Mode = Literal["on", "off", "knockout"]
MODES: tuple[Mode, ...] = ("on", "off", "knockout")
SEGMENT_LEN = 16  # the shortest segment ``train`` accepts: the fastest to train


@dataclass(frozen=True)
class RecallTask:
    """The synthetic vocabulary and the sample layout; an ``Examples`` for ``infsum.training.train``.

    Ids: 0 the query marker, then ``keys`` key ids, ``values`` value ids, ``filler`` filler ids.
    """

    segment_len: int = SEGMENT_LEN
    keys: int = 16
    values: int = 16
    filler: int = 32
    pairs: int = 1  # key -> value pairs in segment 1; the question asks one of them

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.pairs > self.keys or 2 * self.pairs > self.segment_len:
            raise ConfigError(
                f"{self.pairs} pairs do not fit {self.keys} keys and {self.segment_len}-token segments"
            )
        if self.segment_len < 3 or min(self.values, self.filler) < 1:
            raise ConfigError(
                "a segment needs room for the question (3 ids) and at least one value and filler id"
            )

    @property
    def vocab_size(self) -> int:
        """Every id the task uses: the query marker, the keys, the values and the filler."""
        return 1 + self.keys + self.values + self.filler

    @property
    def chance(self) -> float:
        """The best expected accuracy without memory: the value is uniform and independent of the rest."""
        return 1.0 / self.values

    def _key(self, i: int) -> int:
        return 1 + i

    def _value(self, i: int) -> int:
        return 1 + self.keys + i

    def _filler(self, n: int, rng: random.Random) -> list[int]:
        base = 1 + self.keys + self.values
        return [base + rng.randrange(self.filler) for _ in range(n)]

    def example(self, length: int, rng: random.Random) -> Example:
        """One sample of ``length`` tokens (2+ whole segments); only the answer is scored."""
        seg = self.segment_len
        if length % seg or length < 2 * seg:
            raise ConfigError(f"a recall sample is 2+ whole segments of {seg} tokens, not {length} tokens")
        keys = rng.sample(range(self.keys), self.pairs)
        values = [rng.randrange(self.values) for _ in keys]
        first = self._filler(seg, rng)
        for slot, k, v in zip(rng.sample(range(seg // 2), self.pairs), keys, values, strict=True):
            first[2 * slot : 2 * slot + 2] = [self._key(k), self._value(v)]
        asked = rng.randrange(self.pairs)
        question = [0, self._key(keys[asked]), self._value(values[asked])]
        ids = first + self._filler(length - 2 * seg, rng) + self._filler(seg - 3, rng) + question
        labels = [IGNORE] * (length - 1) + [ids[-1]]
        return Example(ids, labels, "recall")


def recall_config(segments: int, *, variant: str = "paper", steps: int = 300, seed: int = 0) -> TrainConfig:
    """The settings that teach ``tiny_llama`` the task at ``segments`` segments per sample in a few
    hundred steps: every weight trains from scratch (``full_finetune``, no LoRA) at lr 1e-2, the gates
    start at sigmoid(0) = 0.5 (memory and local attention mixed evenly, so both get gradient at once)
    and learn at 5e-2; batches of 32 samples, all of exactly ``segments`` segments."""
    return TrainConfig(
        device="cpu",
        steps=steps,
        batch_size=32,
        segment_len=SEGMENT_LEN,
        segments=(segments, segments),
        lr=1e-2,
        gate_lr=5e-2,
        gate_init=0.0,
        variant=variant,
        lora_rank=0,
        full_finetune=True,
        warmup=10,
        seed=seed,
    )


def tiny_llama(vocab_size: int, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> nn.Module:
    """A random-weight Llama (``layers`` layers, ``hidden`` wide, 4 query heads over 2 kv heads of
    ``hidden // 4`` dims) over a synthetic vocabulary; no tokenizer files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class TinyLoaded:
    """What ``train(loaded=...)`` needs of a loaded model; the task has no tokenizer."""

    model: nn.Module
    name: str = "recall-tiny-llama"
    tokenizer: None = None


def _zeros(state: MemoryState) -> MemoryState:
    return MemoryState(
        tuple(torch.zeros_like(m) for m in state.M), tuple(torch.zeros_like(z) for z in state.z)
    )


@torch.no_grad()
def evaluate(
    model: InfiniModel, task: RecallTask, n: int, segments: int, mode: Mode = "on", *, seed: int = 0
) -> float:
    """Accuracy of the greedy (argmax over the whole vocabulary) answer on ``n`` fresh samples of
    ``segments`` segments (teacher forced up to the answer).

    ``mode``: ``on`` the model as trained; ``off`` the same weights and gates under
    ``MemoryConfig(enabled=False)`` (plain local attention); ``knockout`` memory on, but M and z
    replaced by zeros before the last segment. Samples depend only on ``seed``, ``n`` and ``segments``,
    so the three modes see the same ones.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown recall mode {mode!r}: choose one of {', '.join(MODES)}")
    seg = task.segment_len
    rng = random.Random(f"recall-eval/{seed}/{segments}")
    batch = [task.example(segments * seg, rng) for _ in range(n)]
    ids = torch.tensor([e.ids for e in batch], device=model.gates.device)
    answers = ids[:, -1]
    m = model.with_config(replace(model.cfg, enabled=mode != "off"))
    was_training = m.training
    m.eval()
    _, state = m.forward_segments(ids[:, :-seg], each=lambda _h, _cols: None)  # earlier segments: no logits
    if mode == "knockout" and state is not None:
        state = _zeros(state)
    logits, _ = m(ids[:, -seg:-1], state, logits="last")  # the last segment up to the query key
    m.train(was_training)
    return float((logits.argmax(-1) == answers).float().mean())


def chance_bound(n: int, p: float, *, confidence: float = 0.999) -> float:
    """The accuracy that ``n`` samples of a predictor right with probability ``p`` stay at or under
    with probability ``confidence`` (exact binomial upper quantile, as a fraction of ``n``)."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= confidence:
            return k / n
    return 1.0


@dataclass(frozen=True)
class RecallResult:
    """One training run on the recall task and its accuracy in each mode."""

    variant: str
    segments: int
    steps: int
    seconds: float
    accuracy: dict[str, float]
    chance: float
    loss_last10: float  # mean training loss of the last 10 steps

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "variant": self.variant,
            "segments": self.segments,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "chance": self.chance,
            "loss_last10": self.loss_last10,
            **{k: round(v, 4) for k, v in self.accuracy.items()},
        }


def train_recall(
    cfg: TrainConfig,
    task: RecallTask | None = None,
    *,
    eval_samples: int = 1024,
    progress: Callable[[TrainProgress], None] | None = None,
) -> tuple[InfiniModel, RecallResult]:
    """Train a fresh ``tiny_llama`` (initialised from ``cfg.seed``) on ``task`` with infsum's own
    ``train`` and ``cfg`` (e.g. ``recall_config``; its ``segment_len`` must be the task's, its ``out``
    is replaced by a temporary file), then evaluate it in every mode on ``eval_samples`` samples of
    ``cfg.segments[1]`` segments -> (trained model, result). ``progress`` is passed to ``train``."""
    task = task or RecallTask(segment_len=cfg.segment_len)
    if task.segment_len != cfg.segment_len:
        raise ConfigError(
            f"the task's segments ({task.segment_len}) differ from training's ({cfg.segment_len})"
        )
    segments = cfg.segments[1]
    trained: list[InfiniModel] = []

    def measure(model: InfiniModel, _tokenizer: object) -> dict[str, Any]:
        trained.append(model)  # train() hands the trained model only to its evaluate hook
        return {m: evaluate(model, task, eval_samples, segments, m, seed=cfg.seed) for m in MODES}

    loaded = TinyLoaded(tiny_llama(task.vocab_size, seed=cfg.seed))
    with tempfile.TemporaryDirectory() as tmp:
        run = train(
            replace(cfg, out=Path(tmp) / "recall.safetensors"),
            loaded=loaded,
            data=task,
            evaluate=measure,
            progress=progress,
        )
    tail = run.losses[-10:]
    result = RecallResult(
        cfg.variant, segments, run.steps, run.seconds, run.card["eval"], task.chance, sum(tail) / len(tail)
    )
    return trained[0], result
