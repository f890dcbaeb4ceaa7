"""Adapters and the ready model (infsum.engine.adapter): the card's format is checked, a missing file
has one message, every failure is a CheckpointError, the default rule, and LoRA owned by the builder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from infsum.config import MemoryConfig
from infsum.engine import adapter as adapter_mod
from infsum.engine.adapter import (
    ADAPTER_FORMAT,
    DEFAULT,
    DEFAULT_ADAPTER,
    Ready,
    load_adapter,
    ready,
    resolve_adapter,
    save_adapter,
)
from infsum.engine.lora import LoRALinear, add_lora
from infsum.engine.model import convert
from infsum.errors import CheckpointError, InfsumError
from infsum.models import load_model

SEG = 16


@pytest.fixture
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, 49152, (1, n), generator=torch.Generator().manual_seed(7))


def _trained_adapter(tiny_model_dir: Path, path: Path, *, lora: bool, card: dict | None = None) -> Path:
    """An adapter trained on a separate copy of the tiny model: gates (and LoRA) not at their init."""
    model = convert(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), MemoryConfig(SEG))
    if lora:
        add_lora(model, rank=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name or name == "gates":
                p.add_(torch.randn_like(p) * 0.2)
    base = {"format": ADAPTER_FORMAT, "lora": {"rank": 2, "alpha": 4.0}}
    save_adapter(model, path, base if card is None else card)
    return path


def test_an_adapter_of_another_format_is_refused(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _trained_adapter(tiny_model_dir, tmp_path / "v2.safetensors", lora=False, card={"format": "x/2"})
    with pytest.raises(CheckpointError, match=f"^adapter {path} has format 'x/2', this infsum reads"):
        load_adapter(convert(loaded.model, MemoryConfig(SEG)), path)


def test_cards_with_this_format_or_none_load(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    ours = _trained_adapter(tiny_model_dir, tmp_path / "ours.safetensors", lora=False)
    bare = _trained_adapter(tiny_model_dir, tmp_path / "bare.safetensors", lora=False, card={})
    model = convert(loaded.model, MemoryConfig(SEG))
    assert load_adapter(model, ours)["format"] == ADAPTER_FORMAT
    assert load_adapter(model, bare) == {}


def test_the_shipped_adapter_card_is_this_format() -> None:
    """The shipped adapter keeps loading: its card names ADAPTER_FORMAT (and no variant: the paper's)."""
    with safe_open(str(DEFAULT_ADAPTER), framework="pt") as f:
        card = json.loads(f.metadata()["card"])
    assert card["format"] == ADAPTER_FORMAT
    assert card["memory"].get("variant", "paper") == "paper" and card["memory"]["update"] == "delta"


def test_a_missing_adapter_has_one_message_wherever_it_is_found(loaded, tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    want = f"^adapter {missing} not found: check the path, or run without --adapter$"
    with pytest.raises(CheckpointError, match=want):
        load_adapter(convert(loaded.model, MemoryConfig(SEG)), missing)
    with pytest.raises(CheckpointError, match=want):
        ready(loaded, MemoryConfig(SEG), missing)
    with pytest.raises(CheckpointError, match=want):
        ready(loaded, MemoryConfig(SEG), str(missing))


def test_a_lora_weight_naming_no_layer_is_a_checkpoint_error(
    loaded, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    good = _trained_adapter(tiny_model_dir, tmp_path / "good.safetensors", lora=True)
    tensors = load_file(str(good))
    tensors["hf.model.layers.0.self_attn.nowhere.lora_A"] = torch.zeros(2, 64)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"card": json.dumps({"format": ADAPTER_FORMAT})})
    with pytest.raises(
        CheckpointError, match=f"^adapter {bad}: adapter weight .*nowhere.lora_A names no linear"
    ):
        load_adapter(convert(loaded.model, MemoryConfig(SEG)), bad)


def test_load_failures_are_infsum_errors(loaded, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(InfsumError, match=f"^adapter {damaged} is damaged"):
        ready(loaded, MemoryConfig(SEG), damaged)


def test_the_default_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert DEFAULT_ADAPTER.is_file()  # shipped with the package
    assert resolve_adapter(DEFAULT, default_model=True) == DEFAULT_ADAPTER
    assert resolve_adapter(DEFAULT, default_model=False) is None  # trained for the default model only
    assert resolve_adapter(None, default_model=True) is None
    given = tmp_path / "mine.safetensors"
    assert resolve_adapter(given, default_model=True) == given  # a given path wins, even for the default
    assert resolve_adapter(str(given), default_model=False) == given
    monkeypatch.setattr(adapter_mod, "DEFAULT_ADAPTER", tmp_path / "absent.safetensors")
    assert resolve_adapter(DEFAULT, default_model=True) is None  # an install without it runs without


def test_ready_loads_the_adapter_and_says_which(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _trained_adapter(tiny_model_dir, tmp_path / "a.safetensors", lora=True)
    built = ready(loaded, MemoryConfig(SEG), path)
    assert isinstance(built, Ready) and built.adapter == path and built.model.cfg == MemoryConfig(SEG)
    model, adapter = built  # unpacks like a pair
    assert model is built.model and adapter == path
    trained = convert(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), MemoryConfig(SEG))
    load_adapter(trained, path)
    with torch.no_grad():
        torch.testing.assert_close(built.model(_ids(24))[0], trained(_ids(24))[0])
    assert ready(loaded, MemoryConfig(SEG), DEFAULT).adapter is None  # the tiny model is not the default


def test_a_later_build_does_not_keep_an_earlier_builds_lora(
    loaded, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The builder owns LoRA on the shared HF model: a build without an adapter (or with a gates-only
    one) runs the plain HF weights, whatever an earlier build on the same loaded model loaded."""
    with torch.no_grad():
        plain = convert(loaded.model, MemoryConfig(SEG))(_ids(24))[0]
    with_lora = _trained_adapter(tiny_model_dir, tmp_path / "lora.safetensors", lora=True)
    gates_only = _trained_adapter(tiny_model_dir, tmp_path / "gates.safetensors", lora=False)
    ready(loaded, MemoryConfig(SEG), with_lora)
    assert any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    ready(loaded, MemoryConfig(SEG), gates_only)  # would not match if the earlier LoRA were still there
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    ready(loaded, MemoryConfig(SEG), with_lora)
    none = ready(loaded, MemoryConfig(SEG), None)
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    with torch.no_grad():
        assert torch.equal(none.model(_ids(24))[0], plain)


def test_an_adapter_loads_under_any_segment_length(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The card's segment length is a training setting, not a requirement (the shipped adapter was
    trained at 128 and runs at 2048)."""
    path = _trained_adapter(tiny_model_dir, tmp_path / "a.safetensors", lora=False)
    built = ready(loaded, replace(MemoryConfig(SEG), segment_len=SEG * 4), path)
    assert built.model.cfg.segment_len == SEG * 4 and built.adapter == path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_in_inference_uses_one_merged_weight_that_follows_the_adapter(dtype: torch.dtype) -> None:
    """Without gradients in eval mode a LoRA linear gives W x + s B A x with one product (W + s B A) x,
    rebuilt when A, B or W change in place; training mode keeps the separate, differentiable path."""
    torch.manual_seed(0)
    lin = LoRALinear(torch.nn.Linear(12, 10).to(dtype), rank=3, alpha=6.0)
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(5, 12).to(dtype)

    def reference() -> torch.Tensor:
        w = lin.base.weight.float() + lin.scale * lin.lora_B.float() @ lin.lora_A.float()
        return x.float() @ w.T + lin.base.bias.float()

    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    lin.eval()
    with torch.inference_mode():
        torch.testing.assert_close(lin(x).float(), reference(), **tol)
    assert lin._merged is not None
    with torch.no_grad():
        lin.lora_B.mul_(-2.0)  # an optimizer step or a loaded adapter: the merged weight follows
        torch.testing.assert_close(lin(x).float(), reference(), **tol)
        lin.base.weight.add_(1.0)
        torch.testing.assert_close(lin(x).float(), reference(), **tol)
    lin.train()
    y = lin(x)
    assert y.requires_grad  # training never takes the merged weight
    torch.testing.assert_close(y.detach().float(), reference(), **tol)
