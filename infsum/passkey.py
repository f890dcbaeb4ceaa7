"""The passkey test (arXiv 2404.07143, section 4.2): a five-digit key hidden in filler, asked for at the end.

A sample is the chat template around: an instruction, filler text with "The pass key is NNNNN.
Remember it. NNNNN is the pass key." at a chosen depth, and "What is the pass key?"; the assistant's
turn opens with "The pass key is" and the model answers greedily. The answer is right when the first
number it writes is exactly the key. ``length`` counts the whole sample (prompt plus the answer), so a
4096-token sample fills exactly two 2048-token segments and the answer is written inside the last one.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from infsum.config import DEFAULT_SEGMENT_LEN, GenerationConfig, MemoryConfig
from infsum.engine import InfiniModel, InfiniReader
from infsum.errors import ConfigError, EmptyDocumentError
from infsum.models import LoadedModel
from infsum.progress import Counter
from infsum.prompt import chat_prompt
from infsum.tokenizer import Tokenizer

INSTRUCTION = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n\n"
)
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"
ANSWER_SLACK = 4  # tokens kept free after the key's digits: the model's next token must fit the segment

# the paper's filler is five sentences repeated; varied sentences in random order read less like a loop
BUILTIN_FILLER = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
    "The river runs slowly past the old mill.",
    "A dog barks somewhere far away.",
    "The market opens early on Saturdays.",
    "Rain taps softly on the window.",
    "The train was late again.",
    "Bread is baked in the morning.",
    "The children play in the park after school.",
    "A cold wind comes down from the hills.",
    "The library closes at six.",
    "Leaves turn red in autumn.",
    "The road winds between the fields.",
    "Someone left a lamp burning in the hall.",
    "The clock in the square strikes noon.",
    "Boats rock gently in the harbour.",
    "The tea has gone cold.",
    "Snow covers the roofs of the village.",
    "A letter arrived this morning.",
)


class FillerSource:
    """Where filler comes from: the built-in sentences, or prose read from text files (gzipped or not)."""

    def __init__(self, pieces: Sequence[Sequence[int]], *, prose: bool, name: str) -> None:
        self.pieces = [list(p) for p in pieces if p]
        self.prose = prose  # True: each piece is one long text, taken as a contiguous window
        self.name = name

    @classmethod
    def builtin(cls, tokenizer: Tokenizer) -> FillerSource:
        """Random sentences from ``BUILTIN_FILLER``."""
        return cls([tokenizer.encode(" " + s) for s in BUILTIN_FILLER], prose=False, name="builtin")

    @classmethod
    def from_files(cls, tokenizer: Tokenizer, paths: Sequence[Path]) -> FillerSource:
        """Prose from ``paths`` (``.gz`` or plain UTF-8 text); raises EmptyDocumentError if they hold none."""
        texts = [read_prose(Path(p)) for p in paths]
        pieces = [tokenizer.encode(" ".join(t.split())) for t in texts if t.strip()]
        if not pieces:
            raise EmptyDocumentError(f"filler files {', '.join(map(str, paths))} hold no text: pass prose")
        return cls(pieces, prose=True, name=",".join(Path(p).name for p in paths))

    def take(self, n: int, rng: random.Random) -> list[int]:
        """``n`` filler token ids."""
        out: list[int] = []
        if not self.prose:
            while len(out) < n:
                out.extend(rng.choice(self.pieces))
            return out[:n]
        while len(out) < n:  # a random window of a random text; texts shorter than n are chained
            text = rng.choice(self.pieces)
            start = rng.randrange(max(1, len(text) - (n - len(out))))
            out.extend(text[start : start + n - len(out)])
        return out


def read_prose(path: Path) -> str:
    """The text of a UTF-8 corpus or filler file, gunzipped when its name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


@dataclass(frozen=True)
class PasskeySample:
    """One passkey prompt and its expected answer, as token ids."""

    ids: tuple[int, ...]  # chat template, instruction, filler with the key, question, answer prefix
    answer_ids: tuple[int, ...]  # " NNNNN"
    key: str
    key_pos: int  # index in ``ids`` of the key sentence's first token
    depth: float


def random_key(rng: random.Random) -> str:
    """A five-digit key that does not start with 0."""
    return str(rng.randrange(10000, 100000))


def make_sample(
    tokenizer: Tokenizer,
    *,
    length: int,
    depth: float,
    rng: random.Random,
    filler: FillerSource,
    key: str | None = None,
    key_end: int | None = None,
) -> PasskeySample:
    """A sample of ``length`` tokens (prompt + answer + slack) with the key at ``depth`` (0 = start of
    the filler, 1 = just before the question). With ``key_end`` the key sentence ends at or before
    that token index and ``depth`` is a fraction of the filler before it (training keeps the key out of
    the last segment this way). Raises ConfigError when ``length`` is too short."""
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"passkey depth {depth} is outside 0..1: pass depths such as 0,0.5,1")
    key = key or random_key(rng)
    turn = chat_prompt(tokenizer, QUESTION, answer_prefix=ANSWER_PREFIX)
    instruction = tokenizer.encode(INSTRUCTION)  # the body: the instruction, then the haystack
    head = len(turn.opening) + len(instruction)  # tokens before the filler
    key_ids = tokenizer.encode(KEY_SENTENCE.format(key=key))
    answer = tokenizer.encode(" " + key)
    n_fill = length - head - len(key_ids) - len(turn.closing) - len(answer) - ANSWER_SLACK
    if n_fill < 0:
        raise ConfigError(
            f"passkey length {length} is too short for the prompt: use at least {length - n_fill} tokens"
        )
    fill = filler.take(n_fill, rng)
    room = n_fill if key_end is None else min(n_fill, max(0, key_end - head - len(key_ids)))
    at = round(depth * room)
    ids = turn.around(instruction + fill[:at] + key_ids + fill[at:])
    return PasskeySample(tuple(ids), tuple(answer), key, head + at, depth)


def check_answer(text: str, key: str) -> bool:
    """True when the first number in the answer is exactly ``key`` (nothing before it but spaces)."""
    m = re.match(r"\s*(\d+)", text)
    return m is not None and m.group(1) == key


@dataclass(frozen=True)
class PasskeyTrial:
    """One scored sample."""

    length: int
    depth: float
    key: str
    key_pos: int
    answer: str
    correct: bool


@dataclass(frozen=True)
class PasskeyReport:
    """Every trial of a passkey run and the settings that produced it."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    trials: int
    segment_len: int
    memory: bool
    seed: int
    filler: str
    results: tuple[PasskeyTrial, ...]

    def accuracy(self, length: int, depth: float) -> float:
        """Fraction of correct trials at one (length, depth) cell."""
        cell = [r.correct for r in self.results if r.length == length and r.depth == depth]
        return sum(cell) / len(cell) if cell else float("nan")

    def rows(self) -> list[tuple[int, list[float]]]:
        """One row per length: (length, accuracy at each depth in ``depths`` order)."""
        return [(n, [self.accuracy(n, d) for d in self.depths]) for n in self.lengths]

    def mean(self, *, earlier_only: bool = False) -> float:
        """Mean accuracy over all trials; ``earlier_only`` keeps keys that lie before the last segment."""
        keep = [
            r.correct
            for r in self.results
            if not earlier_only or r.key_pos < (r.length - 1) // self.segment_len * self.segment_len
        ]
        return sum(keep) / len(keep) if keep else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: settings, the length x depth table and every trial."""
        d = asdict(self)
        d["table"] = {
            str(n): {str(dep): acc for dep, acc in zip(self.depths, accs, strict=True)}
            for n, accs in self.rows()
        }
        d["mean"] = self.mean()
        d["mean_earlier_segments"] = self.mean(earlier_only=True)
        return d


def sample_rng(seed: int, length: int, depth: float, trial: int) -> random.Random:
    """The random source of one passkey sample (its key and filler): the same seed, length, depth
    and trial give the same sample in every run and every caller. The depth counts as a float, so
    0 and 0.0 name one sample."""
    return random.Random(f"{seed}/{length}/{float(depth)}/{trial}")


def run_passkey(
    model: LoadedModel | InfiniModel,
    *,
    tokenizer: Tokenizer | None = None,
    lengths: Sequence[int] = (4096, 16384, 65536),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 5,
    segment_len: int = DEFAULT_SEGMENT_LEN,
    memory: bool = True,
    seed: int = 0,
    filler: Sequence[Path] = (),
    progress: Counter | None = None,
) -> PasskeyReport:
    """Run the passkey test: ``trials`` samples per (length, depth), answered greedily, scored exactly.

    ``model`` is a LoadedModel (converted here with a fresh, untrained memory) or an InfiniModel (its
    gates and any adapter kept); ``tokenizer`` is needed with an InfiniModel. Samples depend only on
    ``seed``, length, depth and trial, so runs with memory on and off see the same prompts.
    ``progress(done, total)`` counts trials.
    """
    if isinstance(model, LoadedModel):
        tokenizer = model.tokenizer
        base = model.model
        infini = InfiniModel(base, MemoryConfig(segment_len=segment_len, enabled=memory))
        infini.decode_weights = model.decode_weights
    else:
        infini = model
    if tokenizer is None:
        raise ConfigError("run_passkey needs the tokenizer when given an InfiniModel: pass tokenizer=")
    if trials < 1 or not lengths or not depths:
        raise ConfigError("passkey needs at least one length, one depth and one trial")
    infini = infini.with_config(replace(infini.cfg, segment_len=segment_len, enabled=memory))
    source = FillerSource.from_files(tokenizer, filler) if filler else FillerSource.builtin(tokenizer)
    reader = InfiniReader(infini)
    results: list[PasskeyTrial] = []
    total = len(lengths) * len(depths) * trials
    for length in lengths:
        for depth in depths:
            for t in range(trials):
                rng = sample_rng(seed, length, depth, t)
                sample = make_sample(tokenizer, length=length, depth=depth, rng=rng, filler=source)
                answer = _answer(reader, sample, tokenizer)
                results.append(
                    PasskeyTrial(
                        length, depth, sample.key, sample.key_pos, answer, check_answer(answer, sample.key)
                    )
                )
                if progress is not None:
                    progress(len(results), total)
    return PasskeyReport(
        tuple(lengths), tuple(depths), trials, segment_len, memory, seed, source.name, tuple(results)
    )


def _answer(reader: InfiniReader, sample: PasskeySample, tokenizer: Tokenizer) -> str:
    """The model's greedy answer (a few tokens: enough for the key and what follows it)."""
    ids = torch.tensor(sample.ids)
    seg = reader.cfg.segment_len
    if not reader.cfg.enabled and not reader.cfg.exact_tokens:
        # without memory or store only the local (last) segment can reach the answer: skip the earlier
        # ones, the output is identical and a 64K sample takes seconds instead of minutes
        ids = ids[-seg:]  # the local segment is at most the last seg tokens
    gen = GenerationConfig(
        max_new_tokens=len(sample.answer_ids) + 2, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0
    )
    out = reader.generate(None, ids, gen, stop_ids=tokenizer.eos_ids)
    return tokenizer.decode(out)
