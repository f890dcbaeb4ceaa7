"""The passkey test: samples put the key where asked, answers are checked exactly (issue 6)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest
import torch

from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine.model import InfiniModel
from infsum.engine.stream import InfiniReader
from infsum.errors import ConfigError
from infsum.models import load_model
from infsum.passkey import (
    ANSWER_PREFIX,
    ANSWER_SLACK,
    INSTRUCTION,
    KEY_SENTENCE,
    QUESTION,
    FillerSource,
    _answer,
    check_answer,
    make_sample,
    run_passkey,
    sample_rng,
)
from infsum.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_sample_puts_the_key_at_the_requested_depth(tok, depth: float) -> None:
    length = 1000
    s = make_sample(tok, length=length, depth=depth, rng=random.Random(3), filler=FillerSource.builtin(tok))
    key_ids = tok.encode(KEY_SENTENCE.format(key=s.key))
    assert list(s.ids[s.key_pos : s.key_pos + len(key_ids)]) == key_ids
    assert len(s.ids) + len(s.answer_ids) + ANSWER_SLACK == length
    before, after = tok.chat_parts()
    head = len(tok.encode_chat_scaffold(before) + tok.encode(INSTRUCTION))
    tail = len(tok.encode("\n\n" + QUESTION) + tok.encode_chat_scaffold(after) + tok.encode(ANSWER_PREFIX))
    n_fill = len(s.ids) - head - len(key_ids) - tail  # filler tokens around the key
    assert abs(s.key_pos - (head + depth * n_fill)) <= 1
    text = tok.decode(list(s.ids))
    assert text.count(f"The pass key is {s.key}.") == 1
    assert text.endswith("<|im_start|>assistant\nThe pass key is")
    assert tok.decode(list(s.answer_ids)) == " " + s.key


def test_depth_one_puts_the_key_right_before_the_question(tok) -> None:
    s = make_sample(tok, length=600, depth=1.0, rng=random.Random(0), filler=FillerSource.builtin(tok))
    after_key = tok.decode(list(s.ids[s.key_pos :]))
    assert after_key.startswith(KEY_SENTENCE.format(key=s.key) + "\n\nWhat is the pass key?")


def test_sample_too_short_names_the_minimum(tok) -> None:
    with pytest.raises(ConfigError, match="too short"):
        make_sample(tok, length=20, depth=0.5, rng=random.Random(0), filler=FillerSource.builtin(tok))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("12345", True),
        (" 12345.", True),
        ("12345 is the key", True),
        ("123456", False),
        ("1234", False),
        ("the key is 12345", False),
        ("", False),
        (" 12346", False),
    ],
)
def test_answer_check_is_exact(text: str, ok: bool) -> None:
    assert check_answer(text, "12345") is ok


def test_prose_filler_is_a_window_of_the_file(tok, tmp_path: Path) -> None:
    words = " ".join(f"word{i}" for i in range(3000))
    path = tmp_path / "book.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(words)
    src = FillerSource.from_files(tok, [path])
    window = src.take(200, random.Random(1))
    whole = src.pieces[0]
    starts = [i for i in range(len(whole) - 199) if whole[i : i + 200] == window]
    assert starts, "the filler must be a contiguous slice of the book's tokens"


def test_memory_off_answer_skips_only_what_cannot_matter(tiny_model_dir: Path, tok) -> None:
    """Memory off runs only the last segment: the answer must equal reading every segment."""
    hf = load_model(str(tiny_model_dir), device="cpu").model
    off = InfiniModel(hf, MemoryConfig(segment_len=64, enabled=False))
    s = make_sample(tok, length=256, depth=0.0, rng=random.Random(0), filler=FillerSource.builtin(tok))
    gen = GenerationConfig(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0)
    full = InfiniReader(off).generate(None, torch.tensor(s.ids), gen, stop_ids=tok.eos_ids)
    assert _answer(InfiniReader(off), s, tok) == tok.decode(full)


def test_a_sample_is_named_by_seed_length_depth_and_trial_with_the_depth_as_a_float() -> None:
    def draws(seed: int, length: int, depth: float, trial: int) -> list[float]:
        rng = sample_rng(seed, length, depth, trial)
        return [rng.random() for _ in range(3)]

    assert draws(0, 4096, 0, 1) == draws(0, 4096, 0.0, 1)  # an integer depth is the CLI's sample
    assert draws(0, 4096, 1, 0) == draws(0, 4096, 1.0, 0)
    assert draws(0, 4096, 0.0, 1) != draws(0, 4096, 0.0, 0) != draws(0, 8192, 0.0, 0)
    assert draws(0, 4096, 0.25, 0) != draws(1, 4096, 0.25, 0)


def test_run_passkey_reports_a_cell_per_length_and_depth(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu")
    kw = dict(lengths=(256,), depths=(0.0, 1.0), trials=2, segment_len=64, seed=5)
    on = run_passkey(loaded, memory=True, **kw)
    off = run_passkey(loaded, memory=False, **kw)
    assert [r.key for r in on.results] == [r.key for r in off.results]  # same prompts
    ints = run_passkey(loaded, memory=False, **{**kw, "depths": (0, 1)})
    assert [r.key for r in ints.results] == [r.key for r in off.results]  # 0 and 0.0: one sample
    assert len(on.results) == 4 and on.rows()[0][0] == 256 and len(on.rows()[0][1]) == 2
    d = on.to_dict()
    assert set(d["table"]["256"]) == {"0.0", "1.0"}
    assert d["memory"] is True and off.to_dict()["memory"] is False
    for r in on.results:
        assert r.correct == check_answer(r.answer, r.key)
