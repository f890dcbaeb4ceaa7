"""Float16 copies of a float32 model's weights, for decoded tokens on a CPU.

A decoded token multiplies one row by every weight of the model once, so a decode step is bound by
the bytes it reads: 540 MB in float32 for SmolLM2-135M. On a CPU without native bfloat16 (where
infsum runs float32), the same products from float16 copies of the weights read half the bytes and
ran 2.7x as fast (one row, 198 against 532 us for a 576 x 3,072 product; float16 products
accumulate in float32, converted with F16C), while a segment of 2,048 rows ran 7x slower in float16
than in float32 (docs/speed.md). So streaming keeps the float32 weights and only decoded tokens
read the copies.

``DecodeCopies`` holds one model's copies (``InfiniModel`` owns one, shared with the models
``with_config`` makes, so the copies go with the model). Products that share their input are fused
into one copy (q, k, v; gate, up); a LoRA linear is copied with its merged weight. A copy is built
on first use and rebuilt in place when a weight changes (its storage or its version, as
``LoRALinear.merged_weight`` tracks them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infsum.engine.lora import LoRALinear

HALF = torch.float16
MAX_ROWS = 4  # float16 copies win up to 4 rows a product here (2.4x at 2, 1.3x at 4, 0.7x at 8)

_Copy = tuple[tuple[int, ...], Tensor, Tensor | None, tuple[int, ...]]  # key, weight, bias, splits
Group = tuple[nn.Module, ...]  # linears that share their input, copied as one stacked weight


def _sources(lin: nn.Module) -> tuple[Tensor, ...] | None:
    """The tensors a plain or LoRA linear's effective weight and bias are built from, else None."""
    if isinstance(lin, LoRALinear):
        base = lin.base
        return (base.weight, lin.lora_A, lin.lora_B) + (() if base.bias is None else (base.bias,))
    if type(lin) is nn.Linear:
        return (lin.weight,) if lin.bias is None else (lin.weight, lin.bias)
    return None


def _parts(lin: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(effective weight, bias) of a plain or LoRA linear (one ``_sources`` accepts)."""
    if isinstance(lin, LoRALinear):
        return lin.merged_weight(), lin.base.bias
    return lin.weight, lin.bias


def _key(group: Sequence[nn.Module]) -> tuple[int, ...] | None:
    """The storage and version of every tensor ``group``'s copy is built from (checked on every use,
    so kept cheap: the merged LoRA weight is only asked for on a rebuild); None where a linear is
    neither a plain ``nn.Linear`` nor a ``LoRALinear``."""
    sources = [_sources(lin) for lin in group]
    if any(s is None for s in sources):
        return None
    return tuple(n for ts in sources for t in ts for n in (t.data_ptr(), t._version))  # type: ignore[union-attr]


def _copy(group: Sequence[nn.Module], key: tuple[int, ...], into: Tensor | None = None) -> _Copy:
    """The stacked float16 weight and bias (None when no linear has one) of ``group``, each linear
    copied into its rows (no float32 temporary: a first version with them peaked 50 MB higher);
    the weight is written into ``into`` where it has the stacked shape."""
    parts = [_parts(lin) for lin in group]
    splits = tuple(w.shape[0] for w, _ in parts)
    w0 = parts[0][0]
    weight = into
    if weight is None or weight.shape != (sum(splits), w0.shape[1]):
        weight = torch.empty(sum(splits), w0.shape[1], dtype=HALF, device=w0.device)
    bias = None
    if any(b is not None for _, b in parts):
        bias = torch.zeros(sum(splits), dtype=HALF, device=w0.device)
    with torch.no_grad():
        for (w, _), rows in zip(parts, weight.split(splits), strict=True):
            rows.copy_(w)
        if bias is not None:
            for (_, b), rows in zip(parts, bias.split(splits), strict=True):
                if b is not None:
                    rows.copy_(b)
    return key, weight, bias, splits


class DecodeCopies:
    """The float16 copies of one model's linears, for its decoded tokens."""

    def __init__(self) -> None:
        self._copies: dict[Group, _Copy] = {}

    def linear(self, linears: Sequence[nn.Module], x: Tensor) -> list[Tensor] | None:
        """``[lin(x) for lin in linears]`` from one float16 copy of their stacked weights, in x's
        dtype (the linears must share their input size); None where one of them is not a plain
        ``nn.Linear`` or a ``LoRALinear`` (the caller then runs them itself). A copy that is missing
        or stale is built (in place of the stale one where it fits).

        Float16 holds values up to 65,504: a product outside it comes back as inf or nan, which the
        caller checks for (``InfiniModel.decode`` checks the step's logits and redoes the step in
        float32)."""
        group = tuple(linears)
        key = _key(group)
        if key is None:
            return None
        copy = self._copies.get(group)
        if copy is None or copy[0] != key:
            copy = self._copies[group] = _copy(group, key, None if copy is None else copy[1])
        _, weight, bias, splits = copy
        out = F.linear(x.to(HALF), weight, bias).to(x.dtype)
        return list(out.split(splits, dim=-1))


def products(linears: Sequence[nn.Module], x: Tensor, copies: DecodeCopies | None = None) -> list[Tensor]:
    """``[lin(x) for lin in linears]``: from their float16 copy in ``copies`` where there are copies
    and they can have one (``DecodeCopies.linear``); otherwise by running them."""
    out = copies.linear(linears, x) if copies is not None else None
    return out if out is not None else [lin(x) for lin in linears]
