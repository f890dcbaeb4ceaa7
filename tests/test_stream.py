"""The segment loop (infsum.engine.stream): streaming in pieces, memory use, generation, state files
(issue 3)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
import transformers

from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine import stream
from infsum.engine.model import convert
from infsum.engine.stream import InfiniReader, load_state, save_state
from infsum.errors import CheckpointError, ConfigError

SEG = 16
GREEDY = GenerationConfig(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0)


@pytest.fixture
def reader(tiny_model_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return InfiniReader(convert(hf, MemoryConfig(segment_len=SEG, gate_init=3.0)))


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(seed))


def _same_state(a, b) -> bool:
    return (
        a.n_read == b.n_read
        and torch.equal(a.pending, b.pending)
        and torch.equal(a.recent, b.recent)
        and all(
            torch.equal(x, y) for x, y in zip(a.memory.M + a.memory.z, b.memory.M + b.memory.z, strict=True)
        )
    )


def test_reading_in_pieces_equals_reading_at_once(reader):
    ids = _ids(200)
    whole = reader.read(ids)
    state = None
    for a, b in [(0, 1), (1, 17), (17, 40), (40, 40), (40, 100), (100, 200)]:
        state = reader.read(ids[a:b].tolist(), state)
    assert whole.n_read == 200 and len(whole.pending) == 200 % SEG
    assert _same_state(whole, state)
    prompt = _ids(5, seed=1)
    assert reader.generate(whole, prompt, GREEDY) == reader.generate(state, prompt, GREEDY)


def test_progress_reports_tokens_of_the_call(reader):
    calls = []
    reader.read(_ids(50), reader.read(_ids(10)), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(6, 50), (22, 50), (38, 50)]  # 10 pending + 50 = 3 full segments of 16


def test_the_heap_is_given_back_after_every_segment_and_every_answer(reader, monkeypatch):
    calls = []
    monkeypatch.setattr(stream, "release_freed", lambda: calls.append("trim") or True)
    state = reader.read(_ids(50), progress=lambda done, _total: calls.append(done))
    assert calls == ["trim", 16, "trim", 32, "trim", 48]  # each segment's activations, then progress
    calls.clear()
    reader.generate(state, _ids(5, seed=1), replace(GREEDY, max_new_tokens=3))
    assert calls == ["trim"]
    calls.clear()
    list(reader.read_many([_ids(40), _ids(20)], rows=2))
    assert calls == ["trim", "trim"]  # one batched forward per segment: both rows, then the first


@pytest.mark.parametrize("copies", [None, "float16"])
def test_decode_copies_are_built_before_the_prefill_then_the_heap_given_back(reader, copies, monkeypatch):
    calls: list[object] = []
    model = reader.model
    prepare, decode = model.prepare_decode, model.decode
    monkeypatch.setattr(stream, "release_freed", lambda: calls.append("trim") or True)
    monkeypatch.setattr(model, "prepare_decode", lambda: calls.append("prepare") or prepare())
    monkeypatch.setattr(model, "decode", lambda ids, *rest: calls.append(ids.shape[1]) or decode(ids, *rest))
    model.decode_weights = copies
    state = reader.read(_ids(20))
    calls.clear()
    reader.generate(state, _ids(5, seed=1), replace(GREEDY, max_new_tokens=3, min_new_tokens=3))
    prefill = calls[2] if copies else calls[1]
    assert calls == ["prepare", *(["trim"] if copies else []), prefill, 1, 1, 1, "trim"]  # a step per token
    assert isinstance(prefill, int) and prefill > 5  # the pending tail and the prompt in one step


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_is_trimmed_through_glibc():
    assert stream.release_freed() is True


def test_every_segment_memory_changes_the_output(reader):
    """Perturbing any one earlier segment changes the next token's logits (memory written and read)."""
    ids, prompt = _ids(4 * SEG), _ids(4, seed=2)[None]

    def final_logits(book):
        with torch.inference_mode():
            return reader.model(prompt, reader.read(book).memory, logits="last")[0]

    base = final_logits(ids)
    for s in range(4):
        changed = ids.clone()
        changed[s * SEG + 3] = (changed[s * SEG + 3] + 1) % 49152
        assert (final_logits(changed) - base).abs().max() > 1e-4, f"segment {s} did not reach the output"


def test_memory_off_ignores_earlier_segments(tiny_model_dir):
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reader = InfiniReader(convert(hf, MemoryConfig(segment_len=SEG, enabled=False)))
    a, b = _ids(3 * SEG, seed=3), _ids(3 * SEG, seed=4)
    prompt = _ids(5, seed=5)
    assert reader.generate(reader.read(a), prompt, GREEDY) == reader.generate(reader.read(b), prompt, GREEDY)


def _logits_after(reader, memory, local):
    with torch.inference_mode():
        return reader.model(local[None], memory, logits="last", write=False)[0].flatten()


def test_generation_rolls_into_memory_like_reading(reader):
    """Each greedy token's logits equal those of a direct computation across several segment
    boundaries: an answer longer than a segment first sends the pending book tail to memory (one
    short segment), then starts the local segment with the prompt and rolls every SEG tokens."""
    book, prompt = _ids(40, seed=6), _ids(5, seed=7)
    gen = replace(GREEDY, max_new_tokens=40)  # longer than a segment
    steps = []
    out = reader.generate(reader.read(book), prompt, gen, on_token=steps.append)
    assert len(out) == gen.max_new_tokens
    with torch.inference_mode():
        memory = reader.read(book).memory
        _, memory = reader.model(book[32:][None], memory, logits="none")  # the short pending segment
    seq = prompt.clone()
    for tok in out:
        n_full = (len(seq) - 1) // SEG * SEG
        mem = memory
        with torch.inference_mode():
            for s in range(0, n_full, SEG):
                _, mem = reader.model(seq[s : s + SEG][None], mem, logits="none")
        assert int(_logits_after(reader, mem, seq[n_full:]).argmax()) == tok
        seq = torch.cat([seq, torch.tensor([tok])])


def test_an_answer_that_fits_keeps_the_book_tail_and_prompt_local(reader, monkeypatch):
    """With room for the whole answer, nothing rolls into memory mid-answer: the oldest pending
    tokens go to memory first, and the prefill sees the book's tail + prompt, SEG - max_new_tokens
    tokens, as one local segment."""
    book, prompt = _ids(46, seed=8), _ids(3, seed=9)  # 14 pending tokens: with the prompt, 17 > SEG
    gen = replace(GREEDY, max_new_tokens=6)
    calls, prefills = [], []
    real_commit, real_decode = reader.model.commit, reader.model.decode
    monkeypatch.setattr(reader.model, "commit", lambda *a, **k: calls.append(1) or real_commit(*a, **k))

    def decode(ids, memory, cache):
        logits = real_decode(ids, memory, cache)
        if not prefills:
            prefills.append((ids.clone(), logits.clone()))
        return logits

    monkeypatch.setattr(reader.model, "decode", decode)
    state = reader.read(book)
    out = reader.generate(state, prompt, gen)
    assert len(out) == 6 and calls == []
    tail = torch.cat([book[32:], prompt])
    assert torch.equal(prefills[0][0].flatten().cpu(), tail[-(SEG - 6) :])
    with torch.inference_mode():
        _, memory = reader.model(tail[:7][None], state.memory, logits="none")
    torch.testing.assert_close(prefills[0][1].flatten(), _logits_after(reader, memory, tail[7:]))


def test_a_short_pending_tail_is_topped_up_with_the_last_segment(reader, monkeypatch):
    """A book ending just after a segment boundary still has its last SEG - max_new_tokens tokens
    in the local segment at generation: the end of the last segment (already in memory) is re-read
    locally and not written again."""
    book, prompt = _ids(34, seed=10), _ids(3, seed=11)  # 2 pending tokens
    gen = replace(GREEDY, max_new_tokens=6)
    state = reader.read(book)
    assert torch.equal(state.recent, book[16:32]) and torch.equal(state.pending, book[32:])
    prefills = []
    real_decode = reader.model.decode

    def decode(ids, memory, cache):
        if not prefills:
            prefills.append((ids.clone(), memory))
        return real_decode(ids, memory, cache)

    monkeypatch.setattr(reader.model, "decode", decode)
    reader.generate(state, prompt, gen)
    local, memory = prefills[0]
    assert torch.equal(local.flatten().cpu(), torch.cat([book, prompt])[-(SEG - 6) :])
    assert all(torch.equal(x, y) for x, y in zip(memory.M, state.memory.M, strict=True))  # not re-written


def test_generation_stops_on_a_stop_id(reader):
    state = reader.read(_ids(30))
    full = reader.generate(state, _ids(3, seed=8), GREEDY)
    stopped = reader.generate(state, _ids(3, seed=8), GREEDY, stop_ids={full[5]})
    assert stopped == full[: full.index(full[5])]


def test_no_stop_before_min_new_tokens(reader):
    state, prompt = reader.read(_ids(30)), _ids(3, seed=8)
    full = reader.generate(state, prompt, GREEDY)
    assert reader.generate(state, prompt, GREEDY, stop_ids={full[0]}) == []
    held = reader.generate(state, prompt, replace(GREEDY, min_new_tokens=6), stop_ids={full[0]})
    assert len(held) >= 6 and full[0] not in held[:6]
    assert full[0] != held[0]  # the stop id was the greedy pick and was passed over


def test_sampling_is_reproducible_with_a_seed(reader):
    state, prompt = reader.read(_ids(30)), _ids(3, seed=9)
    gen = GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    a = reader.generate(state, prompt, gen)
    assert a == reader.generate(state, prompt, gen)
    assert a != reader.generate(state, prompt, replace(gen, seed=8))


def test_no_repeat_ngram_bans_repeated_ngrams(reader):
    gen = replace(GREEDY, max_new_tokens=60, no_repeat_ngram=2)
    out = reader.generate(reader.read(_ids(20)), _ids(3, seed=10), gen)
    pairs = list(zip(out, out[1:], strict=False))
    assert len(pairs) == len(set(pairs))


def test_generate_needs_some_tokens(reader):
    with pytest.raises(ConfigError, match="nothing to generate from"):
        reader.generate(None, [], GREEDY)


def test_state_file_round_trip_gives_identical_generation(reader, tmp_path):
    state = reader.read(_ids(100))
    save_state(state, tmp_path / "book.state")
    loaded = load_state(tmp_path / "book.state")
    assert _same_state(state, loaded)
    prompt = _ids(5, seed=11)
    assert reader.generate(loaded, prompt, GREEDY) == reader.generate(state, prompt, GREEDY)
    assert reader.read(_ids(7, seed=12), loaded).n_read == 107


def test_state_file_size_does_not_depend_on_length(reader, tmp_path):
    sizes = set()
    for n in (20, 333, 1000):
        save_state(reader.read(_ids(n)), tmp_path / f"{n}.state")
        sizes.add((tmp_path / f"{n}.state").stat().st_size)
    assert len(sizes) == 1


def test_state_from_other_settings_raises_checkpoint_error(reader, tmp_path):
    save_state(reader.read(_ids(40)), tmp_path / "s.state")
    other = InfiniReader(convert(reader.model.hf, MemoryConfig(segment_len=SEG * 2, gate_init=3.0)))
    with pytest.raises(CheckpointError, match="segment length 16"):
        other.read(_ids(4), load_state(tmp_path / "s.state"))
    with pytest.raises(CheckpointError, match="not found"):
        load_state(tmp_path / "missing.state")
    (tmp_path / "bad.state").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_state(tmp_path / "bad.state")


# One child process per length, so ru_maxrss is each run's own peak. Both runs together took 37 s on
# one core of the shared 2-core machine (bfloat16, segments of 1024: 977 segments for 1M tokens).
_STREAM = textwrap.dedent("""
    import json, resource, sys, torch, transformers
    from infsum.config import MemoryConfig
    from infsum.engine import InfiniReader, convert, save_state
    torch.set_num_threads(1)
    model_dir, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    reader = InfiniReader(convert(hf, MemoryConfig(segment_len=1024, gate_init=3.0)))
    gen, state = torch.Generator().manual_seed(0), None
    for start in range(0, n, 100_000):  # ids made piece by piece, so the input is not in the peak
        state = reader.read(torch.randint(0, 49152, (min(100_000, n - start),), generator=gen), state)
    save_state(state, out)
    mem = state.memory
    print(json.dumps({"finite": all(bool(torch.isfinite(t).all()) for t in mem.M + mem.z),
                      "z_max": max(float(z.max()) for z in mem.z), "n_read": state.n_read,
                      "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


@pytest.fixture(scope="module")
def streamed(tiny_model_dir, tmp_path_factory):
    """Stream 10K and 1M random tokens in bfloat16 in fresh processes -> {n: (report, state size)}."""
    out = {}
    for n in (10_000, 1_000_000):
        path = tmp_path_factory.mktemp("stream") / f"{n}.state"
        done = subprocess.run(
            [sys.executable, "-c", _STREAM, str(tiny_model_dir), str(n), str(path)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        out[n] = (json.loads(done.stdout.strip().splitlines()[-1]), path.stat().st_size)
    return out


def test_one_million_tokens_in_bfloat16_stay_finite(streamed):
    report, _ = streamed[1_000_000]
    assert report["n_read"] == 1_000_000
    assert report["finite"] and report["z_max"] > 1e5  # z really accumulated a million keys


def test_peak_memory_does_not_grow_with_length(streamed):
    small, large = streamed[10_000][0]["peak_rss_kb"], streamed[1_000_000][0]["peak_rss_kb"]
    assert abs(large - small) / small < 0.05, (small, large)


def test_state_file_size_is_the_same_for_10k_and_1m_tokens(streamed):
    assert streamed[10_000][1] == streamed[1_000_000][1]


def test_a_state_from_another_memory_variant_is_refused(reader, tmp_path):
    state = reader.read(_ids(3 * SEG))
    save_state(state, tmp_path / "s.safetensors")
    loaded = load_state(tmp_path / "s.safetensors")
    assert loaded.variant == "paper"
    l2 = InfiniReader(convert(reader.model.hf, MemoryConfig(segment_len=SEG, variant="l2")))
    with pytest.raises(CheckpointError, match="paper memory variant, this reader uses l2"):
        l2.generate(loaded, [1, 2, 3], GREEDY)
    assert len(l2.generate(l2.read(_ids(3 * SEG)), [1, 2, 3], GREEDY)) > 0  # its own state works


class _PreviousSampler:
    """The sampler as it was before the decode loop was trimmed (issue 14): a vocabulary-sized mask
    of seen tokens and full-vocabulary passes for the repetition penalty."""

    def __init__(self, gen: GenerationConfig, vocab: int) -> None:
        self.gen = gen
        self.seen = torch.zeros(vocab, dtype=torch.bool)
        self.ngrams: dict[tuple[int, ...], set[int]] = {}
        self.rng = None
        if gen.temperature > 0:
            self.rng = torch.Generator().manual_seed(gen.seed)

    def choose(self, logits, out, banned=()):
        gen, n = self.gen, self.gen.no_repeat_ngram
        if out:
            self.seen[out[-1]] = True
            if n > 0 and len(out) >= n:
                self.ngrams.setdefault(tuple(out[-n:-1]), set()).add(out[-1])
        logits = logits.float()
        if gen.repetition_penalty != 1.0:
            p = gen.repetition_penalty
            logits = torch.where(self.seen, torch.where(logits > 0, logits / p, logits * p), logits)
        if n > 0 and len(out) >= n - 1:
            repeats = self.ngrams.get(tuple(out[len(out) - n + 1 :]), ())
            if repeats:
                logits[list(repeats)] = float("-inf")
        if banned:
            logits[list(banned)] = float("-inf")
        if self.rng is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / gen.temperature, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p > gen.top_p] = 0.0
        return int(order[torch.multinomial(sorted_p, 1, generator=self.rng)])


class _PreviousReader(InfiniReader):
    """InfiniReader with the decode loop as it was before issue 14 (a new step tensor per token)."""

    def _decode_loop(self, local, memory, gen, stop, on_token, hide_from, spared=()):
        assert not spared  # the previous loop had no spared tokens
        cache = self.model.new_cache(1)
        cache.hide_from = hide_from
        logits = self.model.decode(local[None], memory, cache)[0]
        sampler, out = _PreviousSampler(gen, logits.shape[-1]), []
        for _ in range(gen.max_new_tokens):
            tok = sampler.choose(logits, out, banned=stop if len(out) < gen.min_new_tokens else ())
            if tok in stop:
                break
            out.append(tok)
            if cache.pos == cache.size:
                memory = self.model.commit(memory, cache)
            logits = self.model.decode(torch.tensor([[tok]]), memory, cache)[0]
        return out


@pytest.mark.parametrize(
    "gen",
    [
        GenerationConfig(max_new_tokens=50, temperature=0.0, repetition_penalty=1.3, no_repeat_ngram=2),
        GenerationConfig(max_new_tokens=50, temperature=0.0, repetition_penalty=0.8, no_repeat_ngram=3),
        GenerationConfig(max_new_tokens=50, min_new_tokens=10, temperature=0.9, top_p=0.9, seed=3),
    ],
    ids=["penalty-bigrams", "boost-trigrams", "sampled"],
)
def test_the_trimmed_decode_loop_gives_the_previous_loops_tokens(reader, gen):
    """Token for token the same as before issue 14, through a roll into memory (50 tokens > SEG)."""
    previous = _PreviousReader(reader.model)
    state, prompt = reader.read(_ids(40)), _ids(5, seed=11)
    stop = set(previous.generate(state, prompt, replace(gen, min_new_tokens=0))[3:5])
    for stop_ids in ((), stop):
        want = previous.generate(state, prompt, gen, stop_ids)
        assert reader.generate(state, prompt, gen, stop_ids) == want
        assert len(want) >= 10 or stop_ids


def test_a_spared_sequence_continues_past_the_repetition_penalty_and_the_ngram_ban():
    from infsum.engine.stream import _Sampler

    gen = GenerationConfig(max_new_tokens=8, repetition_penalty=2.0, no_repeat_ngram=2)
    cpu = torch.device("cpu")

    def last_choice(sampler: _Sampler, out: list[int]) -> int:
        for i in range(len(out) + 1):  # one call per step, as the decode loop makes them
            choice = sampler.choose(torch.tensor([0.0, 1.0, 1.0, 3.0, 1.0, 2.9, 0.0]), out[:i])
        return choice

    # after 3, 5, 3: token 5 is penalised (2.9 -> 1.45) and banned (the bigram 3 -> 5 was written),
    # 3 is penalised (3.0 -> 1.5) and wins
    assert last_choice(_Sampler(gen, cpu), [3, 5, 3]) == 3
    # with the name (3, 5) spared, 5 keeps its 2.9 after a 3 and may follow it again
    assert last_choice(_Sampler(gen, cpu, spared=[(3, 5)]), [3, 5, 3]) == 5
    # only as the name's continuation: after a 1 the written 5 is penalised (1.45, below 3's 1.5);
    # and a name's first token (5 of the name (5, 3)) is penalised as any other
    assert last_choice(_Sampler(gen, cpu, spared=[(3, 5)]), [3, 5, 1]) == 3
    assert last_choice(_Sampler(gen, cpu, spared=[(5, 3)]), [3, 5, 1]) == 3
