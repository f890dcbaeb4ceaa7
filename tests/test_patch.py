"""InfiniModel (infsum.engine.model): equal to the HF model with memory closed, memory per layer per
kv head written with keys before RoPE, gradients through segments, adapters (issue 3)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch.testing import assert_close

from infsum.config import MemoryConfig
from infsum.engine.adapter import load_adapter, save_adapter
from infsum.engine.memory import MemoryState, sigma
from infsum.engine.model import convert
from infsum.errors import CheckpointError, ConfigError, PatchError

SEG = 32


@pytest.fixture
def hf(tiny_model_dir):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _ids(b: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 49152, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "cfg", [MemoryConfig(segment_len=SEG, gate_init=-1e4), MemoryConfig(segment_len=SEG, enabled=False)]
)
def test_closed_memory_gives_the_hf_logits(hf, cfg):
    ids = _ids(2, 20)
    with torch.no_grad():
        ref = hf(ids).logits
        logits, state = convert(hf, cfg)(ids)
    assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    assert (state is None) == (not cfg.enabled)


def test_wrapping_never_changes_the_hf_model(hf):
    ids = _ids(1, 40)
    with torch.no_grad():
        before = hf(ids).logits
        model = convert(hf, MemoryConfig(segment_len=SEG, gate_init=3.0))
        _, state = model(ids[:, :SEG])
        model(ids[:, SEG:], state)
        after = hf(ids).logits
    assert torch.equal(before, after)
    assert model.hf is hf


def test_memory_is_per_layer_per_kv_head_and_written_before_rope(hf):
    """M and z of each layer equal a loop over kv heads of sigma(K)^T V with un-rotated keys."""
    ids = _ids(1, SEG, seed=1)
    model = convert(hf, MemoryConfig(segment_len=SEG, gate_init=-1e4, update="linear"))
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states  # input of every layer
        _, state = model(ids)
    d, kv = model.head_dim, model.n_kv
    for i, layer in enumerate(hf.model.layers):
        x = layer.input_layernorm(hidden[i])[0]  # (n, hidden)
        k = layer.self_attn.k_proj(x).detach()
        v = layer.self_attn.v_proj(x).detach()
        for j in range(kv):
            kj, vj = sigma(k[:, j * d : (j + 1) * d]), v[:, j * d : (j + 1) * d]
            assert_close(state.M[i][0, j], kj.T @ vj, rtol=1e-4, atol=1e-4)
            assert_close(state.z[i][0, j], kj.sum(0))
    assert not torch.allclose(state.M[0], state.M[1])  # one memory per layer, not shared


def test_query_heads_read_the_memory_of_their_kv_group(hf):
    """With the gate fully open, layer 0's attention output is o_proj of each query head's read."""
    model = convert(hf, MemoryConfig(segment_len=SEG, gate_init=1e4))
    seen = {}
    o_proj = hf.model.layers[0].self_attn.o_proj
    handle = o_proj.register_forward_hook(lambda mod, inp, out: seen.setdefault("a", inp[0]))
    try:
        with torch.no_grad():
            _, state = model(_ids(1, SEG, seed=2))
            seen.clear()
            ids = _ids(1, 8, seed=3)
            model(ids, state)
    finally:
        handle.remove()
    attn = hf.model.layers[0].self_attn
    x = hf.model.layers[0].input_layernorm(hf.model.embed_tokens(ids))[0]
    q = attn.q_proj(x).detach()
    d, g = model.head_dim, model.groups
    for h in range(model.n_heads):
        sq = sigma(q[:, h * d : (h + 1) * d])  # (n, d) before RoPE
        M, z = state.M[0][0, h // g], state.z[0][0, h // g]
        expected = (sq @ M) / (sq @ z)[:, None]
        assert_close(seen["a"][0, :, h * d : (h + 1) * d], expected, rtol=1e-4, atol=1e-5)


def test_memory_state_stays_float32_in_bfloat16(tiny_model_dir):
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = convert(hf16, MemoryConfig(segment_len=SEG))
    with torch.no_grad():
        logits, state = model(_ids(1, SEG))
    assert logits.dtype == torch.bfloat16
    assert {t.dtype for t in state.M + state.z} == {torch.float32}


def test_gates_are_one_learned_parameter_per_query_head(hf):
    model = convert(hf, MemoryConfig(segment_len=SEG, gate_init=-2.0))
    assert model.gates.shape == (2, 4)
    assert isinstance(model.gates, torch.nn.Parameter) and model.gates.requires_grad
    assert_close(model.gates, torch.full((2, 4), -2.0))
    assert "gates" in dict(model.named_parameters())


@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradients_flow_through_memory_across_segments(hf, checkpoint):
    model = convert(hf, MemoryConfig(segment_len=16, gate_init=0.0))
    ids = _ids(1, 48, seed=4)
    segs = list(ids.split(16, dim=1))
    outs, state = model.forward_segments(ids, checkpoint=checkpoint)
    outs[-1].float().logsumexp(-1).mean().backward()
    assert isinstance(state, MemoryState) and len(outs) == 3
    grad = model.gates.grad
    assert grad is not None and grad.abs().sum() > 0
    emb = hf.model.embed_tokens.weight.grad
    assert emb[segs[0][0]].abs().sum() > 0  # the first segment reaches the last one's loss via memory


def test_checkpointing_gives_the_same_gradients(hf):
    model = convert(hf, MemoryConfig(segment_len=16, gate_init=0.5))
    ids = _ids(1, 32, seed=5)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        outs, _ = model.forward_segments(ids, checkpoint=ckpt)
        sum(o.logsumexp(-1).mean() for o in outs).backward()
        grads.append(model.gates.grad.clone())
    assert_close(grads[0], grads[1])


def test_unsupported_architecture_raises_patch_error():
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100)
    with pytest.raises(PatchError, match="'gpt2' cannot get Infini memories"):
        convert(transformers.GPT2LMHeadModel(cfg))


def test_adapter_round_trip(hf, tmp_path):
    model = convert(hf, MemoryConfig(segment_len=SEG))
    with torch.no_grad():
        model.gates.copy_(torch.arange(8, dtype=torch.float32).view(2, 4))
    save_adapter(model, tmp_path / "a.safetensors", {"steps": 3, "task": "passkey"})
    fresh = convert(hf, MemoryConfig(segment_len=SEG))
    card = load_adapter(fresh, tmp_path / "a.safetensors")
    assert card == {"steps": 3, "task": "passkey"}
    assert torch.equal(fresh.gates, model.gates)


def test_mismatched_adapter_raises_checkpoint_error(hf, tmp_path):
    small = dict(
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=32,
        vocab_size=100,
    )
    other = convert(transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)))
    save_adapter(other, tmp_path / "other.safetensors", {})
    with pytest.raises(CheckpointError, match="gates has shape \\(2, 2\\), this model needs \\(2, 4\\)"):
        load_adapter(convert(hf), tmp_path / "other.safetensors")


def test_damaged_or_missing_adapter_raises_checkpoint_error(hf, tmp_path):
    model = convert(hf)
    with pytest.raises(CheckpointError, match="not found"):
        load_adapter(model, tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_adapter(model, tmp_path / "bad.safetensors")


def test_initial_gate_leans_on_local_attention(hf):
    gate = 1 / (1 + math.exp(-convert(hf).gates[0, 0].item()))
    assert gate < 0.01  # MemoryConfig.gate_init: an untrained conversion barely reads memory


def test_adapter_with_lora_loads_into_a_fresh_conversion(tiny_model_dir, tmp_path):
    """An adapter carrying LoRA weights loads into a model that has no LoRA yet (as the pipeline
    does with the shipped adapter) and reproduces the trained model's logits."""
    from infsum.engine.lora import add_lora

    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(3))
    cfg = MemoryConfig(segment_len=8, gate_init=0.5)
    trained = convert(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    add_lora(trained, rank=4)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora" in name or name == "gates":
                p.add_(torch.randn_like(p) * 0.1)
    save_adapter(trained, tmp_path / "a.safetensors", {"lora": {"rank": 4, "alpha": 8}})
    fresh = convert(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    load_adapter(fresh, tmp_path / "a.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, None)[0], trained(ids, None)[0])


@pytest.mark.parametrize("arch", ["Qwen2", "Mistral"])
def test_closed_memory_gives_the_hf_logits_for_other_llama_family_models(arch):
    """Qwen2 (biased q/k/v) and Mistral convert too: with memory off the logits are the model's."""
    config_cls = getattr(transformers, f"{arch}Config")
    model_cls = getattr(transformers, f"{arch}ForCausalLM")
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=None,
    )
    model = model_cls(config).eval()
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        got, _ = convert(model, MemoryConfig(segment_len=SEG, enabled=False))(ids, None)
    assert_close(got, want)


def test_an_adapter_for_another_memory_variant_is_refused(hf, tmp_path):
    model = convert(hf, MemoryConfig(segment_len=SEG))
    save_adapter(model, tmp_path / "a.safetensors", {"memory": {"variant": "paper", "update": "delta"}})
    with pytest.raises(CheckpointError, match="a.safetensors"):
        load_adapter(convert(hf, MemoryConfig(segment_len=SEG, variant="armt")), tmp_path / "a.safetensors")
    load_adapter(convert(hf, MemoryConfig(segment_len=SEG)), tmp_path / "a.safetensors")  # a match loads


def test_an_unknown_memory_variant_names_the_choices(hf):
    with pytest.raises(ConfigError, match="choose one of paper, armt, l2, l2-rms"):
        convert(hf, MemoryConfig(segment_len=SEG, variant="nope"))


def test_with_config_shares_weights_and_gates(hf):
    model = convert(hf, MemoryConfig(segment_len=SEG, gate_init=0.5))
    assert model.with_config(model.cfg) is model
    other = model.with_config(MemoryConfig(segment_len=SEG * 2, enabled=False, gate_init=-9.0))
    assert other.hf is hf and other.gates is model.gates and other.name == model.name
    assert other.cfg.segment_len == SEG * 2 and not other.cfg.enabled
    with torch.no_grad():
        model.gates.fill_(1.0)
    assert torch.equal(other.gates, torch.ones_like(other.gates))  # shared, not copied


def test_forward_segments_keeps_what_each_returns_and_skips_the_lm_head_when_asked(hf):
    model = convert(hf, MemoryConfig(segment_len=16, gate_init=0.0))
    ids = _ids(1, 40, seed=6)
    calls = []
    handle = hf.lm_head.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    try:
        with torch.no_grad():
            cols, state = model.forward_segments(ids, each=lambda h, c: (h.shape[1], c))
            assert calls == []  # nothing asked for logits: the LM head never ran
            logits, again = model.forward_segments(ids)
    finally:
        handle.remove()
    assert cols == [(16, slice(0, 16)), (16, slice(16, 32)), (8, slice(32, 48))]  # the last is shorter
    assert [t.shape[1] for t in logits] == [16, 16, 8] and len(calls) == 3
    assert all(torch.equal(a, b) for a, b in zip(state.M, again.M, strict=True))
    with torch.no_grad():  # the same segments one by one through forward
        _, s1 = model(ids[:, :16])
        _, s2 = model(ids[:, 16:32], s1)
        last, _ = model(ids[:, 32:], s2)
    assert_close(logits[-1], last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoded_token_attends_each_query_head_to_its_kv_group(hf, dtype):
    """One decoded query over cached keys (no mask): every query head h attends over kv head h // g,
    whichever SDPA path the dtype takes (bfloat16 folds the g heads into the query axis)."""
    model = convert(hf, MemoryConfig(segment_len=SEG))
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, model.n_heads, 1, model.head_dim, generator=g).to(dtype)
    k, v = (torch.randn(1, model.n_kv, 20, model.head_dim, generator=g).to(dtype) for _ in range(2))
    out = model._sdpa(q, k, v, pos=19)
    for h in range(model.n_heads):
        kk, vv = k[0, h // model.groups].float(), v[0, h // model.groups].float()
        w = torch.softmax(q[0, h].float() @ kk.T * model.scale, dim=-1)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        assert_close(out[0, h].float(), w @ vv, rtol=tol, atol=tol)


def test_blocked_causal_attention_matches_the_causal_softmax(hf):
    """Streaming in bfloat16 on a CPU takes the blocked path: every query head h attends causally over
    kv head h // g, within bfloat16 rounding of the float32 loop reference, across block edges."""
    model = convert(hf, MemoryConfig(segment_len=300))
    g = torch.Generator().manual_seed(5)
    n = 300  # not a multiple of the block: the last block is short
    q = torch.randn(1, model.n_heads, n, model.head_dim, generator=g).to(torch.bfloat16)
    k, v = (torch.randn(1, model.n_kv, n, model.head_dim, generator=g).to(torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        out = model._sdpa(q, k, v, pos=0)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    for h in range(model.n_heads):
        kk, vv = k[0, h // model.groups].float(), v[0, h // model.groups].float()
        w = (q[0, h].float() @ kk.T * model.scale).masked_fill(~mask, float("-inf")).softmax(dim=-1)
        assert_close(out[0, h].float(), w @ vv, rtol=2e-2, atol=3e-2)
