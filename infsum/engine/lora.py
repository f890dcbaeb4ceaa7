"""Low-rank adapters (LoRA) on a model's attention projections, added and removed in place.

``y = W x + (alpha / r) * B (A x)`` with ``A`` (r, d_in) random and ``B`` (d_out, r) zero, so a freshly
added adapter leaves the model's outputs unchanged (Hu et al. 2021, arXiv 2106.09685). The wrapped
``nn.Linear`` keeps its own weight, untouched and frozen; only ``A`` and ``B`` train.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from infsum.errors import ConfigError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_MARKER = ".lora_"  # every adapter parameter name contains this: "...q_proj.lora_A"


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a low-rank update; called exactly like the linear it wraps."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float) -> None:
        super().__init__()
        assert rank > 0, "LoRA rank must be positive"
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=torch.float32, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self._merged: tuple[tuple[int, ...], torch.Tensor] | None = None  # (weights' versions, W + sBA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> (..., d_out). Without gradients in eval mode, one product with the merged
        weight ``W + scale * B A`` (kept until any of the three changes), not three."""
        if not (self.training or torch.is_grad_enabled()):
            return nn.functional.linear(x, self.merged_weight(), self.base.bias)
        delta = (x.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T  # (..., r) -> (..., d_out)
        return self.base(x) + (self.scale * delta).to(x.dtype)

    def merged_weight(self) -> torch.Tensor:
        """``W + scale * B A`` in W's dtype and device, summed in float32; rebuilt when W, A or B was
        changed in place (an optimizer step, a loaded adapter) or replaced. The wrapped linear keeps
        its own weight, so removing the adapter gives back exactly the model it wrapped."""
        w, a, b = self.base.weight, self.lora_A, self.lora_B
        key = tuple(x for t in (w, a, b) for x in (t.data_ptr(), t._version)) + (hash(w.dtype),)
        if self._merged is None or self._merged[0] != key:
            with torch.no_grad():
                merged = w.float() + self.scale * (b.float() @ a.float())
            self._merged = (key, merged.to(w.dtype))
        return self._merged[1]


def add_lora(
    model: nn.Module, *, rank: int = 8, alpha: float | None = None, targets: Iterable[str] = DEFAULT_TARGETS
) -> list[str]:
    """Wrap every linear whose attribute name is in ``targets`` (e.g. ``q_proj``) with ``LoRALinear``.

    ``alpha`` defaults to ``2 * rank``. Returns the dotted names of the wrapped modules; raises
    ConfigError when nothing matched (targets that name no projection of this model).
    """
    targets = tuple(targets)
    alpha = float(2 * rank if alpha is None else alpha)
    wrapped: list[str] = []
    # collect first: replacing children while iterating named_modules would revisit the new modules
    found = [
        (name, parent, child_name, child)
        for name, parent in model.named_modules()
        for child_name, child in parent.named_children()
        if child_name in targets and isinstance(child, nn.Linear)
    ]
    for name, parent, child_name, child in found:
        setattr(parent, child_name, LoRALinear(child, rank=rank, alpha=alpha))
        wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ConfigError(
            f"no linear layer named any of {targets} to add LoRA to: set the LoRA targets to this "
            f"model's projection names (default {', '.join(DEFAULT_TARGETS)})"
        )
    return wrapped


def add_lora_from_state(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, alpha: float | None = None
) -> list[str]:
    """Wrap exactly the linears that ``tensors`` holds adapter weights for, before loading them.

    Names are as in ``model.named_parameters()`` (``...q_proj.lora_A``); the rank comes from each
    ``lora_A``'s shape and ``alpha`` (the card's ``lora.alpha``) defaults to ``2 * rank``, as in
    ``add_lora``. Modules already wrapped are left alone. Returns the names of the wrapped modules;
    raises ValueError for a name that is no linear layer (``load_adapter`` reports it with the file).
    """
    modules = dict(model.named_modules())
    wrapped: list[str] = []
    for key, t in tensors.items():
        if not key.endswith(LORA_MARKER + "A"):
            continue
        name = key[: -len(LORA_MARKER + "A")]
        parent_name, _, child_name = name.rpartition(".")
        child = modules.get(name)
        if isinstance(child, LoRALinear):
            continue
        if not isinstance(child, nn.Linear):
            raise ValueError(f"adapter weight {key} names no linear layer of this model")
        rank = t.shape[0]
        lora = LoRALinear(child, rank=rank, alpha=float(2 * rank if alpha is None else alpha))
        setattr(modules[parent_name] if parent_name else model, child_name, lora)
        wrapped.append(name)
    return wrapped


def remove_lora(model: nn.Module) -> int:
    """Put the original linears back (dropping their adapters); returns how many were removed."""
    found = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, LoRALinear)
    ]
    for parent, child_name, child in found:
        setattr(parent, child_name, child.base)
    return len(found)


def lora_settings(model: nn.Module) -> dict[str, object] | None:
    """``{"rank", "alpha", "targets"}`` of the adapters in ``model`` (for a card); None without any."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not mods:
        return None
    first = mods[0][1]
    targets = sorted({n.rsplit(".", 1)[-1] for n, _ in mods})
    return {"rank": first.rank, "alpha": first.scale * first.rank, "targets": targets}
