"""Weight copies for decoded tokens (engine/decode_weights.py, InfiniModel.decode): float16 copies
of float32 weights, int4 copies of bfloat16 ones.

The products are checked against float64 sums of the same rounded weights and inputs; a weight on a
4-bit grid is found again exactly and any other is held to 8 bits within the stated bound; the
copies follow weights changed in place; a step that leaves float16's range is redone exactly in
float32; the rule that turns the copies on follows the dtype choice, the device and the CPU.
"""

from __future__ import annotations

import logging

import pytest
import torch
import transformers
from torch import nn

from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine import InfiniReader, convert, ready
from infsum.engine.decode_weights import GRID_TOL, DecodeCopies, int4_grid, int8_halves, products
from infsum.engine.lora import LoRALinear
from infsum.engine.model import _norm
from infsum.models import load_model, resolve_decode_weights
from infsum.strategies import WindowSummarizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2 = frozenset({"avx2", "fma", "f16c"})
ZEN4 = AVX2 | {"avx512f", "avx512_bf16"}
SEG = 16


def _reference(lin: nn.Linear, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b in float64 from float16-rounded x, W and b: what the copies compute, up to the
    order of a float32 sum and the output's rounding to float16."""
    w = (lin.weight if weight is None else weight).detach().half().double()
    b = None if lin.bias is None else lin.bias.detach().half().double()
    return torch.nn.functional.linear(x.half().double(), w, b)


def test_fused_products_equal_each_linear_from_float16_weights():
    torch.manual_seed(0)
    q, k, v = nn.Linear(32, 24), nn.Linear(32, 8, bias=False), nn.Linear(32, 8)
    x = torch.randn(1, 1, 32)
    with torch.inference_mode():
        outs = DecodeCopies().linear((q, k, v), x)
    assert outs is not None
    assert [o.shape for o in outs] == [(1, 1, 24), (1, 1, 8), (1, 1, 8)]
    assert all(o.dtype == torch.float32 for o in outs)
    for lin, out in zip((q, k, v), outs, strict=True):
        torch.testing.assert_close(out.double(), _reference(lin, x), rtol=2e-3, atol=2e-3)
        # and close to the float32 product itself: float16 keeps 11 bits of mantissa
        torch.testing.assert_close(out, lin(x), rtol=0, atol=5e-3)


def test_the_copy_follows_a_weight_changed_in_place():
    torch.manual_seed(0)
    copies = DecodeCopies()
    lin = nn.Linear(16, 16, bias=False)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        before = copies.linear((lin,), x)[0]  # type: ignore[index]
    with torch.no_grad():
        lin.weight.mul_(-2.0)
    with torch.inference_mode():
        after = copies.linear((lin,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(after, -2.0 * before, rtol=2e-3, atol=2e-3)


def test_the_copy_follows_a_bias_changed_in_place():
    torch.manual_seed(0)
    copies = DecodeCopies()
    lin = nn.Linear(16, 8)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        copies.linear((lin,), x)
    with torch.no_grad():
        lin.bias.add_(3.0)
    with torch.inference_mode():
        out = copies.linear((lin,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(out.double(), _reference(lin, x), rtol=2e-3, atol=2e-3)


def test_a_stale_copy_is_rebuilt_where_it_was():
    torch.manual_seed(0)
    lin = nn.Linear(8, 16, bias=False)
    copies = DecodeCopies()
    x = torch.randn(1, 8)
    with torch.inference_mode():
        copies.linear((lin,), x)
    before = copies._copies[(lin,)][1].weight.data_ptr()
    with torch.no_grad():
        lin.weight.mul_(-1.0)
    with torch.inference_mode():
        out = copies.linear((lin,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(out.double(), _reference(lin, x), rtol=2e-3, atol=2e-3)
    assert copies._copies[(lin,)][1].weight.data_ptr() == before  # rewritten, not allocated again


def test_the_copies_go_with_the_model_and_its_other_configs(tiny_hf):
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG))
    model.decode_weights = "float16"
    other = model.with_config(MemoryConfig(segment_len=2 * SEG))
    assert other._copies is model._copies and other.decode_weights == "float16"
    assert convert(tiny_hf, MemoryConfig(segment_len=SEG))._copies is not model._copies


@pytest.mark.parametrize("fmt", ["float16", "int4"])
def test_every_copy_a_decoded_token_reads_can_be_built_before_it(tiny_hf, fmt):
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG))
    assert model.prepare_decode() is False and not model._copies._copies  # no copies asked for
    model.decode_weights = fmt
    assert model.prepare_decode() is True
    built = dict(model._copies._copies)
    assert len(built) == 4 * model.n_layers + 1  # q/k/v, o, gate/up, down per layer; the LM head
    _decode_steps(model, torch.randint(0, 49152, (SEG + 3,), generator=torch.Generator().manual_seed(5)), 2)
    assert model._copies._copies == built  # decoding read them: none built again


def test_a_decoded_tokens_rms_norm_is_torchs_fused_one_with_the_same_values(tiny_hf):
    torch.manual_seed(0)
    norm = tiny_hf.model.layers[0].input_layernorm
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(1, 1, norm.weight.shape[0]) * 5
    with torch.inference_mode():
        torch.testing.assert_close(_norm(norm, x, True), norm(x), rtol=1e-6, atol=1e-6)

    class Shifted(nn.Module):  # a norm of another form is run as it is
        weight = norm.weight
        variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1.0

    torch.testing.assert_close(_norm(Shifted(), x, True), x + 1.0)


def test_a_lora_linear_is_copied_with_its_merged_weight():
    torch.manual_seed(0)
    copies = DecodeCopies()
    lora = LoRALinear(nn.Linear(16, 12, bias=False), rank=4, alpha=8.0).eval()
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(1, 16)
    with torch.inference_mode():
        out = copies.linear((lora,), x)[0]  # type: ignore[index]
        want = _reference(lora.base, x, lora.merged_weight())
        torch.testing.assert_close(out.double(), want, rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        lora.lora_B.zero_()  # an adapter changed in place: the copy is rebuilt from the plain weight
    with torch.inference_mode():
        out = copies.linear((lora,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(out.double(), _reference(lora.base, x), rtol=2e-3, atol=2e-3)


def test_a_linear_of_another_kind_is_left_to_the_caller():
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    assert DecodeCopies().linear((nn.Linear(4, 4), Scaled(4, 4)), torch.randn(1, 4)) is None


@pytest.mark.parametrize(
    ("choice", "device", "dtype", "flags", "want"),
    [
        ("auto", CPU, torch.float32, AVX2, "float16"),
        (None, CPU, torch.float32, AVX2, "float16"),  # the default is auto
        ("auto", CPU, torch.float32, ZEN4, "float16"),  # float32 weights: float16 copies anywhere
        ("auto", CPU, torch.float32, frozenset({"avx2"}), None),  # no F16C: not measured, not used
        ("auto", CPU, torch.float32, None, None),  # no /proc/cpuinfo (macOS, Windows)
        ("float32", CPU, torch.float32, AVX2, None),  # float32 asked for by name: exactly float32
        (torch.float32, CPU, torch.float32, AVX2, None),
        ("auto", CPU, torch.bfloat16, ZEN4, "int4"),  # bfloat16 where the CPU computes it
        (None, CPU, torch.bfloat16, ZEN4, "int4"),
        ("bfloat16", CPU, torch.bfloat16, ZEN4, None),  # bfloat16 asked for by name: its weights
        ("auto", CPU, torch.bfloat16, AVX2, None),  # emulated bfloat16: not measured, not used
        ("auto", CUDA, torch.float32, AVX2, None),
        ("auto", CUDA, torch.bfloat16, ZEN4, None),
    ],
)
def test_resolve_decode_weights(choice, device, dtype, flags, want, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: flags)
    assert resolve_decode_weights(choice, device, dtype) == want


def test_the_ready_model_decodes_from_float16_copies_on_an_avx2_cpu(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: AVX2)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.decode_weights == "float16"
    model = ready(loaded, MemoryConfig(segment_len=SEG), None).model
    assert model.decode_weights == "float16"
    assert model.with_config(MemoryConfig(segment_len=2 * SEG)).decode_weights == "float16"
    exact = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert ready(exact, MemoryConfig(segment_len=SEG), None).model.decode_weights is None


def test_the_ready_model_decodes_from_int4_copies_on_a_cpu_with_native_bfloat16(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: ZEN4)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.decode_weights == "int4"
    model = ready(loaded, MemoryConfig(segment_len=SEG), None).model
    assert model.decode_weights == "int4" and model._copies.format == "int4"
    named = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert ready(named, MemoryConfig(segment_len=SEG), None).model.decode_weights is None


def _decode_steps(model, ids: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Read ``ids``, then decode the pending tail and ``steps`` greedy tokens one at a time -> (each
    step's logits, the cache's store scores)."""
    state = InfiniReader(model).read(ids)
    cache = model.new_cache(1)
    out = []
    with torch.inference_mode():
        logits = model.decode(state.pending[None], state.memory, cache)
        for _ in range(steps):
            out.append(logits[0].clone())
            logits = model.decode(logits.argmax(-1, keepdim=True), state.memory, cache)
    return out, cache.score


@pytest.fixture
def tiny_hf(tiny_model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_decoding_from_float16_copies_follows_float32(tiny_hf):
    """One-token steps read the copies (the pending tail, several rows, does not): the logits stay
    within 0.01 of float32's (the tiny model's reach about 1.3) and pick the same tokens."""
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG, exact_tokens=8))
    with torch.no_grad():
        model.gates.fill_(0.0)  # memory and local attention mixed half and half: both matter
    ids = torch.randint(0, 49152, (2 * SEG + 5,), generator=torch.Generator().manual_seed(0))
    exact, _ = _decode_steps(model, ids, 6)
    model.decode_weights = "float16"
    half, _ = _decode_steps(model, ids, 6)
    assert torch.equal(half[0], exact[0])  # the tail's 5 rows: float32
    assert not torch.equal(half[1], exact[1])  # a decoded token: the copies
    for h, e in zip(half, exact, strict=True):
        torch.testing.assert_close(h, e, rtol=0, atol=0.01)
        assert h.argmax() == e.argmax()


@pytest.mark.parametrize("score", ["residual", "attention"])
def test_a_step_that_overflows_float16_is_redone_in_float32(tiny_hf, score, caplog):
    """An MLP whose products pass 65,504 gives inf in float16: the step is run again from the float32
    weights (the same logits and store scores as float32 throughout, the attention score's sums
    included), a warning says so once, and the model decodes in float32 from then on."""
    with torch.no_grad():
        tiny_hf.model.layers[1].mlp.up_proj.weight.mul_(1e6)
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG, exact_tokens=8, exact_score=score))
    ids = torch.randint(0, 49152, (SEG + 5,), generator=torch.Generator().manual_seed(1))
    exact, exact_scores = _decode_steps(model, ids, 4)
    assert all(torch.isfinite(e).all() for e in exact)
    model.decode_weights = "float16"
    with caplog.at_level(logging.WARNING, logger="infsum"):
        half, half_scores = _decode_steps(model, ids, 4)
    assert model.decode_weights is None
    assert [r.getMessage() for r in caplog.records] == [
        "a decoded token overflowed float16: decoding from the float32 weights from here on"
    ]
    assert all(torch.equal(h, e) for h, e in zip(half, exact, strict=True))
    assert torch.equal(half_scores, exact_scores)


def test_the_window_baselines_decode_like_the_ready_model(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: AVX2)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert WindowSummarizer(loaded, GenerationConfig()).reader.model.decode_weights == "float16"


def test_decode_weights_is_none_or_a_format(tiny_hf):
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG))
    with pytest.raises(ValueError, match="decode_weights must be None or one of float16, int4, not 'int8'"):
        model.decode_weights = "int8"
    model.decode_weights = "float16"
    assert model.decode_weights == "float16" and model._copies.format == "float16"
    model.decode_weights = "int4"  # another format: copies of its own
    assert model.decode_weights == "int4" and model._copies.format == "int4"


def _q4_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q (n, k) in 0..15, the float32 weight q * d + m per 32 inputs) on a Q4_1 grid as llama.cpp
    writes one: every group takes 0 and 15; d and m, and m + 8 d, are exact in bfloat16."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.randint(1, 64, (n, k // 32, 1), generator=g) * 2.0**-12
    m = -torch.randint(0, 64, (n, k // 32, 1), generator=g) * 2.0**-9
    return q.view(n, k), (q * d + m).view(n, k)


def _dequantized(q: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """The weight (n, k) float64 that the kernel's (q - 8) * scale + zero describes, group by group."""
    n, k = q.shape
    w = torch.empty(n, k, dtype=torch.float64)
    for j in range(k // 32):
        scale, zero = scales_zeros[j, :, 0].double(), scales_zeros[j, :, 1].double()
        w[:, 32 * j : 32 * (j + 1)] = (q[:, 32 * j : 32 * (j + 1)].double() - 8) * scale[:, None] + zero[
            :, None
        ]
    return w


def test_a_weight_on_a_4_bit_grid_is_found_again_exactly():
    q, w = _q4_weight(48, 96, seed=0)
    grid = int4_grid(w)
    assert grid is not None
    found, scales_zeros = grid
    assert torch.equal(found, q.to(torch.int32))
    assert scales_zeros.shape == (3, 48, 2) and scales_zeros.dtype == torch.bfloat16
    assert torch.equal(_dequantized(found, scales_zeros), w.double())
    assert int4_grid(torch.randn(48, 96)) is None  # an ordinary weight is on no 4-bit grid


def test_any_weight_is_held_to_8_bits_as_two_4_bit_halves():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    w[3, :32] = 0.0  # a group of zeros
    (hi, hi_sz), (lo, lo_sz) = int8_halves(w)
    for q in (hi, lo):
        assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    back = _dequantized(hi, hi_sz) + _dequantized(lo, lo_sz)
    largest = w.abs().view(32, 2, 32).amax(-1, keepdim=True).double()
    err = (back - w.double()).abs().view(32, 2, 32)
    assert bool((err <= GRID_TOL * largest).all())
    assert float(err.max()) > 0  # rounded, not exact: 8 bits
    assert torch.equal(back[3, :32], torch.zeros(32, dtype=torch.float64))


def test_int4_copies_multiply_as_the_grids_they_hold():
    """A fused group (a grid weight and an ordinary one with a bias) against the float64 product of
    the bfloat16-rounded rows with the weights the grids describe, up to the kernel's bfloat16 output."""
    torch.manual_seed(0)
    on_grid, plain = nn.Linear(64, 48), nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        on_grid.weight.copy_(_q4_weight(48, 64, seed=2)[1])
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        outs = DecodeCopies("int4").linear((on_grid, plain), x)
    assert outs is not None and [o.shape for o in outs] == [(1, 1, 48), (1, 1, 16)]
    assert all(o.dtype == torch.float32 for o in outs)
    (hi, hi_sz), (lo, lo_sz) = int8_halves(torch.cat([on_grid.weight, plain.weight]).detach())
    rows = x.bfloat16().double()[0]
    want = rows @ (_dequantized(hi, hi_sz) + _dequantized(lo, lo_sz)).T  # the group is not all on a grid
    want[:, :48] += on_grid.bias.detach().double()
    got = torch.cat(outs, dim=-1)[0].double()
    torch.testing.assert_close(got, want, rtol=8e-3, atol=8e-3)
    alone = DecodeCopies("int4").linear((on_grid,), x)[0][0].double()  # type: ignore[index]
    grid_want = rows @ on_grid.weight.detach().double().T + on_grid.bias.detach().double()
    torch.testing.assert_close(alone, grid_want, rtol=8e-3, atol=8e-3)


def test_int4_packing_a_chunk_of_rows_at_a_time_gives_the_same_bytes():
    w = torch.randn(4096 + 32, 64, generator=torch.Generator().manual_seed(3))  # two chunks of rows
    for (q, sz), (p, psz) in zip(int8_halves(w), int8_halves(w, packed=True), strict=True):
        assert torch.equal(p, torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8))
        assert torch.equal(psz, sz)


def test_a_shape_the_int4_kernel_cannot_take_is_left_to_the_caller():
    lin = nn.Linear(32, 8)  # 8 outputs: the kernel packs rows by 16
    x = torch.randn(1, 32)
    with torch.inference_mode():
        assert DecodeCopies("int4").linear((lin,), x) is None
        torch.testing.assert_close(products((lin,), x, DecodeCopies("int4"))[0], lin(x))


def test_an_int4_copy_follows_a_weight_changed_in_place():
    lin = nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(_q4_weight(16, 64, seed=4)[1])
    copies, x = DecodeCopies("int4"), torch.randn(1, 64)
    with torch.inference_mode():
        before = copies.linear((lin,), x)[0]  # type: ignore[index]
        with torch.no_grad():
            lin.weight.mul_(-1.0)
        after = copies.linear((lin,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(after, -before, rtol=8e-3, atol=8e-3)


def test_decoding_from_int4_copies_follows_bfloat16(tiny_model_dir):
    """A bfloat16 model's one-token steps read the int4 copies (the tiny model's random weights: 8
    bits as two halves): the logits stay close to bfloat16's and pick the same tokens."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    model = convert(hf, MemoryConfig(segment_len=SEG, exact_tokens=8))
    with torch.no_grad():
        model.gates.fill_(0.0)
    ids = torch.randint(0, 49152, (2 * SEG + 5,), generator=torch.Generator().manual_seed(0))
    exact, _ = _decode_steps(model, ids, 6)
    model.decode_weights = "int4"
    copied, _ = _decode_steps(model, ids, 6)
    assert torch.equal(copied[0], exact[0])  # the tail's 5 rows: the weights themselves
    assert not torch.equal(copied[1], exact[1])  # a decoded token: the copies
    for c, e in zip(copied, exact, strict=True):
        torch.testing.assert_close(c.float(), e.float(), rtol=0, atol=0.05)
        assert c.argmax() == e.argmax()
