"""The exact-token store beside the compressive memory (issue 12): bounded size, exact attention when
it holds everything, both scores against references, generation, batching and the state file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch.testing import assert_close
from typer.testing import CliRunner

from infsum.cli import app
from infsum.cli.options import RunOptions
from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine.memory import ExactStore, residual_score, select_store
from infsum.engine.model import convert
from infsum.engine.stream import InfiniReader, load_state, save_state
from infsum.errors import CheckpointError, ConfigError

SEG = 16
SCORES = ("residual", "residual-after", "attention")
GREEDY = GenerationConfig(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=0)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _ids(n: int, seed: int = 0, b: int | None = None) -> torch.Tensor:
    shape = (n,) if b is None else (b, n)
    return torch.randint(0, 49152, shape, generator=torch.Generator().manual_seed(seed))


def _hf_greedy(hf, ids: torch.Tensor, steps: int) -> list[int]:
    """Greedy tokens of the plain HF model over the whole context (full causal attention)."""
    out, seq = [], ids.clone()
    with torch.no_grad():
        for _ in range(steps):
            tok = int(hf(seq[None]).logits[0, -1].argmax())
            out.append(tok)
            seq = torch.cat([seq, torch.tensor([tok])])
    return out


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 70, 200])
def test_the_store_never_holds_more_than_n_pairs(hf, score, n):
    model = convert(hf, MemoryConfig(segment_len=SEG, exact_tokens=5, exact_score=score))
    with torch.no_grad():
        _, state = model.forward_segments(_ids(n, b=2))
    assert len(state.store) == model.n_layers
    for st in state.store:
        assert st.seen == n and st.size == min(5, n)
        assert st.k.shape == st.v.shape == (2, model.n_kv, min(5, n), model.head_dim)
        assert st.score.dtype == torch.float32 and st.score.shape == st.pos.shape == (
            2,
            model.n_kv,
            min(5, n),
        )
        assert bool((st.pos.diff(dim=-1) > 0).all()) and int(st.pos.max()) < n  # stream order, no repeats


@pytest.mark.parametrize("score", SCORES)
def test_a_store_of_every_token_with_memory_off_is_full_causal_attention(hf, score):
    """Stored keys sit just before the segment in RoPE: holding every token, the segments together
    are one causal attention over the whole text, the plain HF forward."""
    ids = _ids(70, seed=1, b=2)
    model = convert(
        hf,
        MemoryConfig(
            segment_len=SEG, enabled=False, exact_tokens=100, exact_score=score, exact_positions="before"
        ),
    )
    with torch.no_grad():
        outs, state = model.forward_segments(ids)
        ref = hf(ids).logits
    assert_close(torch.cat(outs, dim=1), ref, rtol=0, atol=1e-4)
    assert state.M == () and all(st.size == 70 for st in state.store)
    for st in state.store:
        assert torch.equal(st.pos, torch.arange(70).expand(2, model.n_kv, 70))


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("max_new", [6, 40])
def test_generation_with_a_full_store_is_the_hf_greedy_answer(hf, score, max_new):
    """The answer attends over the store too: prefilled after a short segment (6 new tokens), or
    rolling into the store every segment while it is written (40 > SEG, through decode/commit)."""
    model = convert(
        hf,
        MemoryConfig(
            segment_len=SEG, enabled=False, exact_tokens=200, exact_score=score, exact_positions="before"
        ),
    )
    reader = InfiniReader(model)
    book, prompt = _ids(40, seed=2), _ids(5, seed=3)  # 8 pending + 5 > SEG - 6: no re-read
    out = reader.generate(reader.read(book), prompt, replace(GREEDY, max_new_tokens=max_new))
    assert out == _hf_greedy(hf, torch.cat([book, prompt]), max_new)


def test_re_read_tokens_are_hidden_in_the_store(hf, monkeypatch):
    """A short pending tail is topped up with the last segment (already stored): its stored copies
    take no attention while it is local, every earlier stored pair does."""
    model = convert(hf, MemoryConfig(segment_len=SEG, enabled=False, exact_tokens=200))
    reader = InfiniReader(model)
    state = reader.read(_ids(34, seed=4))  # 2 pending: the prefill re-reads SEG - 6 - 2 - 3 = 5 tokens
    prompt = _ids(3, seed=5)
    hides = []
    real_decode = model.decode
    monkeypatch.setattr(
        model, "decode", lambda ids, m, cache: hides.append(cache.hide_from) or real_decode(ids, m, cache)
    )
    reader.generate(state, prompt, GREEDY)
    assert hides[0] == 32 - 5

    local = torch.cat([state.recent[-5:], state.pending, prompt])[None]

    def prefill(lo: int, hi: int, hide_from: int | None) -> torch.Tensor:
        """Prefill logits with the stored values of stream indices lo..hi-1 changed."""
        stores = tuple(
            st._replace(v=torch.where(((st.pos >= lo) & (st.pos < hi))[..., None], st.v * 50 + 3, st.v))
            for st in state.memory.store
        )
        cache = model.new_cache()
        cache.hide_from = hide_from
        with torch.no_grad():
            return real_decode(local, state.memory._replace(store=stores), cache)

    base = prefill(0, 0, 27)
    assert torch.equal(prefill(27, 32, 27), base)  # hidden pairs get exactly zero weight
    assert (prefill(0, 27, 27) - base).abs().max() > 1e-3  # the rest of the store is attended
    assert (prefill(0, 0, None) - base).abs().max() > 1e-4  # without hiding, the copies would count


def test_selection_keeps_a_planted_high_scoring_pair():
    """Candidates compete with stored pairs on their scores: a planted top score survives every later
    segment; the rest of the store is the top N of everything seen, in stream order."""
    gen = torch.Generator().manual_seed(0)
    store, scores = None, []
    for s in range(6):
        k, v = torch.randn(2, 3, 8, 4, generator=gen), torch.randn(2, 3, 8, 4, generator=gen)
        score = torch.rand(2, 3, 8, generator=gen)
        if s == 1:
            score[1, 2, 5] = 10.0  # stream index 13 in row 1, head 2
            planted = (k[1, 2, 5].clone(), v[1, 2, 5].clone())
        scores.append(score)
        store = select_store(store, k, v, score, 6)
    assert store.seen == 48 and store.size == 6
    assert 13 in store.pos[1, 2].tolist()
    at = store.pos[1, 2].tolist().index(13)
    assert torch.equal(store.k[1, 2, at], planted[0]) and torch.equal(store.v[1, 2, at], planted[1])
    top = torch.cat(scores, dim=-1).topk(6, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(store.pos, top)


def test_sinks_stay_whatever_their_scores():
    """exact_sinks: the stream's first tokens are kept (StreamingLLM's attention sinks), the other
    slots go to the top scores."""
    gen = torch.Generator().manual_seed(1)
    store = None
    for _ in range(4):
        k, v = torch.randn(1, 2, 8, 4, generator=gen), torch.randn(1, 2, 8, 4, generator=gen)
        score = torch.rand(1, 2, 8, generator=gen) + 1.0
        if store is None:
            score[..., :3] = 0.0  # the weakest of all
            first = score
        store = select_store(store, k, v, score, 5, sinks=3)
        assert store.pos[..., :3].tolist() == [[[0, 1, 2], [0, 1, 2]]]
    assert torch.equal(store.score[..., :3], first[..., :3])
    with pytest.raises(ConfigError, match="exact-token sinks 9 must lie between 0 and --exact-tokens 8"):
        MemoryConfig(exact_tokens=8, exact_sinks=9)


def _layer0_kv(hf, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer 0's q, k, v (b, heads, n, d) for ids (b, n), before RoPE, from the HF modules."""
    layer, c = hf.model.layers[0], hf.config
    x = layer.input_layernorm(hf.model.embed_tokens(ids))
    b, n, _ = x.shape
    q = layer.self_attn.q_proj(x).view(b, n, c.num_attention_heads, c.head_dim).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(b, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
    v = layer.self_attn.v_proj(x).view(b, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
    return q, k, v


def test_the_residual_score_is_what_the_memory_fails_to_reconstruct(hf):
    """Layer 0 keeps the top N of ||v - sigma(k) M / (sigma(k) z)||^2, with M, z the memory before
    each segment (||v||^2 for the first, empty memory)."""
    ids = _ids(2 * SEG, seed=6, b=2)
    model = convert(hf, MemoryConfig(segment_len=SEG, exact_tokens=6))
    with torch.no_grad():
        _, first = model(ids[:, :SEG])
        _, second = model(ids[:, SEG:], first)
        _, k1, v1 = _layer0_kv(hf, ids[:, :SEG])
        _, k2, v2 = _layer0_kv(hf, ids[:, SEG:])
    held = model.variant.held(model.variant.features(k2), first.M[0], first.z[0])
    ref = torch.cat([v1.pow(2).sum(-1), (v2 - held).pow(2).sum(-1)], dim=-1)  # (b, k, 2 SEG)
    assert_close(residual_score(v2, held), ref[..., SEG:])
    top = ref.topk(6, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(second.store[0].pos, top)
    assert_close(second.store[0].score, ref.gather(-1, top))


def _sigma(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.elu(x.float()) + 1.0


def _after(k: torch.Tensor, v: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||v_t - sigma(k_t) M / (sigma(k_t) z)||^2, token by token (b, h, n)."""
    out = torch.empty(k.shape[:-1])
    for b in range(k.shape[0]):
        for h in range(k.shape[1]):
            for t in range(k.shape[2]):
                sk = _sigma(k[b, h, t])
                out[b, h, t] = (v[b, h, t].float() - sk @ M[b, h] / (sk @ z[b, h])).pow(2).sum()
    return out


@pytest.mark.parametrize("enabled", [True, False])
def test_the_residual_after_score_is_what_the_memory_with_the_segment_fails_to_reconstruct(hf, enabled):
    """Layer 0 keeps the top N of ||v - sigma(k) M / (sigma(k) z)||^2 with M, z the memory AFTER each
    segment is written by the delta rule (eq 5); with the memory off, the memory of the segment alone."""
    ids = _ids(2 * SEG, seed=6, b=2)
    cfg = MemoryConfig(segment_len=SEG, exact_tokens=6, exact_score="residual-after", enabled=enabled)
    model = convert(hf, cfg)
    with torch.no_grad():
        _, first = model(ids[:, :SEG])
        _, second = model(ids[:, SEG:], first)
        _, k1, v1 = _layer0_kv(hf, ids[:, :SEG])
        _, k2, v2 = _layer0_kv(hf, ids[:, SEG:])
    s1, s2 = _sigma(k1), _sigma(k2)
    M1, z1 = s1.transpose(-1, -2) @ v1.float(), s1.sum(dim=-2)
    if enabled:
        before = (s2 @ M1) / (s2 @ z1[..., None])
        M2, z2 = M1 + s2.transpose(-1, -2) @ (v2.float() - before), z1 + s2.sum(dim=-2)
    else:
        M2, z2 = s2.transpose(-1, -2) @ v2.float(), s2.sum(dim=-2)
    ref = torch.cat([_after(k1, v1, M1, z1), _after(k2, v2, M2, z2)], dim=-1)  # (b, k, 2 SEG)
    top = ref.topk(6, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(second.store[0].pos, top)
    assert_close(second.store[0].score, ref.gather(-1, top), rtol=1e-4, atol=1e-5)


def test_the_attention_score_is_the_mean_attention_received_relative_to_uniform(hf):
    """Layer 0's first segment (no store yet, so HF's own positions): key j scores the mean over the
    queries i >= j and the query heads of its group of a_ij * (i + 1), from HF's attention weights."""
    ids = _ids(SEG, seed=7, b=2)
    model = convert(hf, MemoryConfig(segment_len=SEG, exact_tokens=5, exact_score="attention"))
    with torch.no_grad():
        _, state = model(ids)
        hf.config._attn_implementation = "eager"
        try:
            a = hf(ids, output_attentions=True).attentions[0]  # (b, h, n, n)
        finally:
            hf.config._attn_implementation = "sdpa"
    i = torch.arange(SEG, dtype=torch.float32)
    weighted = (a * (i + 1)[:, None]).sum(dim=2)  # (b, h, n): sum over queries
    ref = weighted.view(2, model.n_kv, model.groups, SEG).mean(dim=2) / (SEG - i)
    top = ref.topk(5, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(state.store[0].pos, top)
    assert_close(state.store[0].score, ref.gather(-1, top), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("score", SCORES)
def test_each_batch_row_keeps_the_store_it_would_keep_alone(hf, score):
    model = convert(hf, MemoryConfig(segment_len=SEG, exact_tokens=7, exact_score=score))
    ids = _ids(50, seed=8, b=2)
    with torch.no_grad():
        _, both = model.forward_segments(ids)
        _, alone = model.forward_segments(ids[1:])
    for x, y in zip(both.store, alone.store, strict=True):
        assert torch.equal(x.pos[1:], y.pos)
        assert_close(x.k[1:], y.k)
        assert_close(x.score[1:], y.score)


@pytest.mark.parametrize(("positions", "order_matters"), [("fixed", False), ("before", True)])
def test_the_fixed_placement_puts_every_stored_key_at_one_position(hf, positions, order_matters):
    """With exact_positions="fixed" every stored key sits at one position, so the attention over the
    store ignores the pairs' order; "before" places them in stream order, so the order counts."""
    ids = _ids(SEG + 4, seed=9, b=1)
    model = convert(
        hf, MemoryConfig(segment_len=SEG, enabled=False, exact_tokens=SEG, exact_positions=positions)
    )
    with torch.no_grad():
        _, state = model(ids[:, :SEG])
        logits, _ = model(ids[:, SEG:], state, write=False)
        perm = torch.randperm(SEG, generator=torch.Generator().manual_seed(0))
        shuffled = tuple(
            ExactStore(st.k[:, :, perm], st.v[:, :, perm], st.score[:, :, perm], st.pos[:, :, perm], st.seen)
            for st in state.store
        )
        moved, _ = model(ids[:, SEG:], state._replace(store=shuffled), write=False)
    if order_matters:
        assert (moved - logits).abs().max() > 1e-4
    else:
        assert_close(moved, logits, rtol=0, atol=1e-5)


def test_bfloat16_keeps_pairs_in_the_model_dtype_and_scores_in_float32(tiny_model_dir):
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    model = convert(hf16, MemoryConfig(segment_len=SEG, exact_tokens=4))
    with torch.no_grad():
        _, state = model.forward_segments(_ids(40, b=1))
    st = state.store[0]
    assert st.k.dtype == st.v.dtype == torch.bfloat16 and st.score.dtype == torch.float32
    assert bool(torch.isfinite(st.score).all())


@pytest.fixture
def reader(hf):
    return InfiniReader(convert(hf, MemoryConfig(segment_len=SEG, gate_init=3.0, exact_tokens=8)))


def test_state_file_round_trip_gives_identical_generation(reader, tmp_path):
    state = reader.read(_ids(100, seed=10))
    save_state(state, tmp_path / "book.state")
    loaded = load_state(tmp_path / "book.state")
    assert loaded.store_settings == "--exact-tokens 8 (score residual, positions fixed, 0 sinks)"
    for a, b in zip(state.memory.store, loaded.memory.store, strict=True):
        assert a.seen == b.seen == 96
        assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True))
    prompt = _ids(5, seed=11)
    assert reader.generate(loaded, prompt, GREEDY) == reader.generate(state, prompt, GREEDY)
    assert reader.read(_ids(40, seed=12), loaded).memory.store[0].seen == 128


def test_state_file_size_is_the_same_for_any_length(reader, tmp_path):
    sizes = set()
    for n in (20, 500):  # a store of 1 x 2 x 8 pairs after 20 tokens (still filling), full after 500
        save_state(reader.read(_ids(n)), tmp_path / f"{n}.state")
        sizes.add((tmp_path / f"{n}.state").stat().st_size)
    assert len(sizes) == 1


def test_a_state_with_another_store_is_refused(reader, tmp_path):
    save_state(reader.read(_ids(40)), tmp_path / "s.state")
    loaded = load_state(tmp_path / "s.state")
    for cfg in (replace(reader.cfg, exact_tokens=16), replace(reader.cfg, exact_tokens=0)):
        other = InfiniReader(reader.model.with_config(cfg))
        with pytest.raises(
            CheckpointError, match=r"--exact-tokens 8 \(score residual, positions fixed, 0 sinks\)"
        ):
            other.generate(loaded, [1, 2], GREEDY)
    attention = InfiniReader(reader.model.with_config(replace(reader.cfg, exact_score="attention")))
    with pytest.raises(
        CheckpointError,
        match="this reader uses --exact-tokens 8 \\(score attention, positions fixed, 0 sinks\\)",
    ):
        attention.read([1], loaded)


def test_a_format_1_state_loads_with_no_store(hf, tmp_path):
    """Files written before the store existed: read as exact_tokens 0; a reader with a store refuses."""
    plain = InfiniReader(convert(hf, MemoryConfig(segment_len=SEG, gate_init=3.0)))
    state = plain.read(_ids(40, seed=13))
    save_state(state, tmp_path / "new.state")
    with safe_open(str(tmp_path / "new.state"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["counts"] = tensors["counts"][:3]
    old = {k: v for k, v in meta.items() if not k.startswith("exact_")} | {"format": "infsum-state/1"}
    save_file(tensors, str(tmp_path / "old.state"), metadata=old)
    loaded = load_state(tmp_path / "old.state")
    assert loaded.store_settings == "--exact-tokens 0" and loaded.memory.store == ()
    prompt = _ids(4, seed=14)
    assert plain.generate(loaded, prompt, GREEDY) == plain.generate(state, prompt, GREEDY)
    with pytest.raises(
        CheckpointError, match="state was read with --exact-tokens 0, this reader uses --exact-tokens 4"
    ):
        InfiniReader(plain.model.with_config(replace(plain.cfg, exact_tokens=4))).read([1], loaded)


def test_exact_tokens_zero_keeps_no_store(hf):
    model = convert(hf, MemoryConfig(segment_len=SEG))
    cache = model.new_cache()
    with torch.no_grad():
        _, state = model.forward_segments(_ids(40, b=1))
    assert state.store == () and cache.score is None


def test_bad_exact_tokens_are_config_errors(hf):
    with pytest.raises(ConfigError, match="--exact-tokens -1 is negative"):
        MemoryConfig(exact_tokens=-1)
    with pytest.raises(ConfigError, match="unknown exact-token score 'x'"):
        MemoryConfig(exact_score="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown exact-token positions 'x'"):
        MemoryConfig(exact_positions="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as e:
        convert(hf, MemoryConfig(segment_len=2048, exact_tokens=6145))  # the tiny model's context: 8192
    assert str(e.value) == (
        "--exact-tokens 6145 + --segment-len 2048 exceeds the model's context of 8192 tokens: "
        "lower one so that they sum to 8192 or less"
    )
    convert(hf, MemoryConfig(segment_len=2048, exact_tokens=6144))  # exactly the context fits


def test_exact_tokens_is_an_option_of_every_model_command(tiny_model_dir):
    assert RunOptions(exact_tokens=64).config().memory.exact_tokens == 64
    runner = CliRunner()
    for command in (["summarize"], ["batch"], ["passkey"], ["train"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert "--exact-tokens" in result.stdout, command
    base = ["passkey", "--model", str(tiny_model_dir), "--no-adapter", "--device", "cpu", "--json", "-q"]
    small = ["--lengths", "256", "--segment-len", "128", "--trials", "1", "--depths", "0"]
    result = runner.invoke(app, [*base, *small, "--exact-tokens", "32", "--memory", "off"])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["results"]) == 1
    bad = runner.invoke(app, [*base, *small, "--exact-tokens", "9000"])
    assert bad.exit_code == 2 and "--exact-tokens 9000 + --segment-len 128 exceeds" in bad.stderr


def test_exact_store_is_a_value():
    st = ExactStore(
        torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), 9
    )
    assert st.size == 2 and st.detach().seen == 9 and st.to("cpu").size == 2


@pytest.mark.parametrize("score", SCORES)
def test_gradients_reach_an_earlier_segment_through_the_store_and_checkpointing_agrees(tiny_model_dir, score):
    """Training with a store (``infsum train --exact-tokens``): with the memory off, the first
    segment reaches the last one's loss only through stored pairs; per-segment checkpointing gives
    the same gradients."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = convert(hf, MemoryConfig(segment_len=SEG, enabled=False, exact_tokens=8, exact_score=score))
    ids = _ids(3 * SEG, seed=15, b=1)
    grads = []
    for ckpt in (False, True):
        hf.zero_grad()
        outs, _ = model.forward_segments(ids, checkpoint=ckpt)
        outs[-1].logsumexp(-1).mean().backward()
        grads.append(hf.model.embed_tokens.weight.grad.clone())
    assert grads[0][ids[0, :SEG]].abs().sum() > 0
    assert_close(grads[0], grads[1])


def test_training_builds_the_model_with_the_store(tiny_model_dir):
    from infsum.config import TrainConfig
    from infsum.training import build_model

    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert build_model(hf, TrainConfig(exact_tokens=32)).cfg.exact_tokens == 32


def test_the_summary_records_the_store_and_the_state_file_holds_it(tiny_model_dir, tmp_path):
    from infsum.models import load_model
    from infsum.pipeline import summarize
    from infsum.readers import Book, Chapter

    book = Book("T", None, "en", (Chapter("One", "The keeper counted ships every night. " * 30),), "t.txt")
    cfg = RunOptions(
        model=str(tiny_model_dir), words=5, segment_len=32, exact_tokens=12, no_adapter=True
    ).config()
    result = summarize(
        book, cfg, model=load_model(str(tiny_model_dir), device="cpu"), state_path=tmp_path / "s"
    )
    assert result.exact_tokens == 12 and result.to_dict()["exact_tokens"] == 12
    assert "12 exact tokens)" in result.markdown()
    state = load_state(tmp_path / "s")
    assert state.exact_tokens == 12 and state.memory.store[0].size == 12
