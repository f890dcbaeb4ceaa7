"""Float16 copies of the weights for decoded tokens (engine/decode_weights.py, InfiniModel.decode).

The products are checked against float64 sums of the same float16-rounded weights and inputs; the
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
from infsum.engine.decode_weights import DecodeCopies
from infsum.engine.lora import LoRALinear
from infsum.engine.model import _norm
from infsum.models import load_model, resolve_decode_dtype
from infsum.strategies import WindowSummarizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2 = frozenset({"avx2", "fma", "f16c"})
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
    before = copies._copies[(lin,)][1].data_ptr()
    with torch.no_grad():
        lin.weight.mul_(-1.0)
    with torch.inference_mode():
        out = copies.linear((lin,), x)[0]  # type: ignore[index]
    torch.testing.assert_close(out.double(), _reference(lin, x), rtol=2e-3, atol=2e-3)
    assert copies._copies[(lin,)][1].data_ptr() == before  # rewritten, not allocated again


def test_the_copies_go_with_the_model_and_its_other_configs(tiny_hf):
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG))
    model.decode_dtype = torch.float16
    other = model.with_config(MemoryConfig(segment_len=2 * SEG))
    assert other._copies is model._copies
    assert convert(tiny_hf, MemoryConfig(segment_len=SEG))._copies is not model._copies


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
        ("auto", CPU, torch.float32, AVX2, torch.float16),
        (None, CPU, torch.float32, AVX2, torch.float16),  # the default is auto
        ("auto", CPU, torch.float32, frozenset({"avx2"}), None),  # no F16C: not measured, not used
        ("auto", CPU, torch.float32, None, None),  # no /proc/cpuinfo (macOS, Windows)
        ("float32", CPU, torch.float32, AVX2, None),  # float32 asked for by name: exactly float32
        (torch.float32, CPU, torch.float32, AVX2, None),
        ("auto", CPU, torch.bfloat16, AVX2, None),  # bfloat16 weights are read as they are
        ("auto", CUDA, torch.float32, AVX2, None),
    ],
)
def test_resolve_decode_dtype(choice, device, dtype, flags, want, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: flags)
    assert resolve_decode_dtype(choice, device, dtype) is want


def test_the_ready_model_decodes_from_float16_copies_on_an_avx2_cpu(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: AVX2)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.dtype == torch.float32 and loaded.decode_dtype == torch.float16
    model = ready(loaded, MemoryConfig(segment_len=SEG), None).model
    assert model.decode_dtype == torch.float16
    assert model.with_config(MemoryConfig(segment_len=2 * SEG)).decode_dtype == torch.float16
    exact = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    assert ready(exact, MemoryConfig(segment_len=SEG), None).model.decode_dtype is None


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
    model.decode_dtype = torch.float16
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
    model.decode_dtype = torch.float16
    with caplog.at_level(logging.WARNING, logger="infsum"):
        half, half_scores = _decode_steps(model, ids, 4)
    assert model.decode_dtype is None
    assert [r.getMessage() for r in caplog.records] == [
        "a decoded token overflowed float16: decoding from the float32 weights from here on"
    ]
    assert all(torch.equal(h, e) for h, e in zip(half, exact, strict=True))
    assert torch.equal(half_scores, exact_scores)


def test_the_window_baselines_decode_like_the_ready_model(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("infsum.models.cpu_flags", lambda: AVX2)
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert WindowSummarizer(loaded, GenerationConfig()).reader.model.decode_dtype == torch.float16


def test_decode_dtype_is_float16_or_none(tiny_hf):
    model = convert(tiny_hf, MemoryConfig(segment_len=SEG))
    with pytest.raises(ValueError, match="decode_dtype must be None or torch.float16"):
        model.decode_dtype = torch.bfloat16
    model.decode_dtype = torch.float16
    assert model.decode_dtype == torch.float16
