"""Several texts streamed side by side (``InfiniReader.read_many``, ``infsum batch --parallel``): each
row of the batch gives the state that reading its text alone gives."""

from __future__ import annotations

import pytest
import torch
import transformers

from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine.model import convert
from infsum.engine.stream import InfiniReader
from infsum.errors import ConfigError

SEG = 16
GREEDY = GenerationConfig(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0)
# lengths chosen so rows finish at different steps, one text is shorter than a segment, one is an
# exact number of segments and the last ones join the batch after others left it
LENGTHS = (90, 7, 48, 130, 33, 16, 75)


def _reader(model_dir, **memory) -> InfiniReader:
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return InfiniReader(convert(hf, MemoryConfig(segment_len=SEG, gate_init=0.0, **memory)))


def _texts() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 49152, (n,), generator=g) for n in LENGTHS]


@pytest.fixture(scope="module")
def reader(tiny_model_dir):
    return _reader(tiny_model_dir)


def _assert_same(a, b) -> None:
    assert a.n_read == b.n_read
    assert torch.equal(a.pending, b.pending) and torch.equal(a.recent, b.recent)
    if b.memory is None:
        assert a.memory is None
        return
    assert a.memory.M[0].shape == b.memory.M[0].shape  # a batch of one, like read's
    for x, y in zip(a.memory.M + a.memory.z, b.memory.M + b.memory.z, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 3, 8])
def test_each_row_reads_as_its_text_alone(reader, rows):
    texts = _texts()
    got = dict(reader.read_many(iter(texts), rows))
    assert sorted(got) == list(range(len(texts)))
    for i, ids in enumerate(texts):
        _assert_same(got[i], reader.read(ids))


def test_answers_from_a_batched_read_equal_a_single_read(reader):
    texts, prompt = _texts(), torch.arange(5) + 100
    for i, state in reader.read_many(texts, 3):
        assert reader.generate(state, prompt, GREEDY) == reader.generate(
            reader.read(texts[i]), prompt, GREEDY
        )


def test_texts_finish_in_order_of_their_segments_and_are_taken_lazily(reader):
    taken = []

    def texts():
        for i, t in enumerate(_texts()):
            taken.append(i)
            yield t

    order = []
    for i, _ in reader.read_many(texts(), 2):
        order.append((i, list(taken)))
    # 7 tokens (no full segment) comes back at once; 48 tokens (3 segments) beside 90 (5) ends first
    assert [i for i, _ in order][:3] == [1, 2, 0]
    assert order[0][1] == [0, 1]  # only the rows' texts (and the short one) were taken so far
    assert len(taken) == len(LENGTHS)


def test_progress_counts_tokens_of_full_segments(reader):
    calls = []
    list(reader.read_many(_texts()[:3], 2, progress=lambda d, t: calls.append((d, t))))
    # 90 -> 80 and 48 -> 48 in full segments (7 tokens have none): 2 rows for 3 steps, then 1 for 2
    assert calls == [(32, 128), (64, 128), (96, 128), (112, 128), (128, 128)]


def test_memory_off_and_the_store_read_as_alone(tiny_model_dir):
    for memory in ({"enabled": False}, {"exact_tokens": 8}):
        reader, texts = _reader(tiny_model_dir, **memory), _texts()[:4]
        for i, state in reader.read_many(texts, 3):
            alone = reader.read(texts[i])
            assert state.n_read == alone.n_read and torch.equal(state.pending, alone.pending)
            if alone.memory is None:  # the 7-token text: nothing written
                assert state.memory is None
            elif memory.get("exact_tokens"):  # one text at a time: exactly read's memory and store
                assert torch.equal(state.memory.store[0].k, alone.memory.store[0].k)
                assert state.memory.store[0].seen == alone.memory.store[0].seen
            else:
                raise AssertionError("memory off writes nothing")


def test_rows_must_be_positive(reader):
    with pytest.raises(ConfigError, match="--parallel 0"):
        list(reader.read_many(_texts(), 0))
