"""Float16 copies of a float32 model's weights, for decoded tokens on a CPU.

A decoded token multiplies one row by every weight of the model once, so a decode step is bound by
the bytes it reads: 540 MB in float32 for SmolLM2-135M. On a CPU without native bfloat16 (where
infsum runs float32), the same products from float16 copies of the weights read half the bytes and
ran 2.7x as fast (one row, 198 against 532 us for a 576 x 3,072 product; float16 products
accumulate in float32, converted with F16C), while a segment of 2,048 rows ran 7x slower in float16
than in float32 (docs/speed.md). So streaming keeps the float32 weights and only decoded tokens
read the copies.

The copies are built on first use and rebuilt when a weight changes (its storage or its version, as
``LoRALinear.merged_weight`` tracks them): a LoRA linear is copied with its merged weight. Products
that share their input are fused into one copy (q, k, v; gate, up). The copies live in a module-level
cache keyed weakly by the first linear, so they go with the model and are shared by every
``InfiniModel`` built on the same HF model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infsum.engine.lora import LoRALinear

HALF = torch.float16
MAX_ROWS = 4  # float16 copies win up to 4 rows a product here (2.4x at 2, 1.3x at 4, 0.7x at 8)

_Copy = tuple[tuple[int, ...], Tensor, Tensor | None, tuple[int, ...]]  # key, weight, bias, splits
_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[int, _Copy]] = weakref.WeakKeyDictionary()


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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_freed() -> bool:
    """Give the heap's freed memory back to the system (glibc's ``malloc_trim``) -> whether it could.

    ``InfiniReader.generate`` calls it after an answer decoded from the copies. The float16
    products move glibc's allocation pattern so that the freed activations of the next segments
    stayed in the heap: RSS after a 16K-token passkey trial grew from 1,372 to 1,597 MiB on the
    second trial, and stayed at 1,276 after every trial with this call (docs/speed.md). No-op where
    the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return trim is not None


def _copy(linears: Sequence[nn.Module], key: tuple[int, ...]) -> _Copy:
    """The stacked float16 weight and bias (None when no linear has one) of ``linears``, each
    copied into its rows (no float32 temporary: a first version with them peaked 50 MB higher)."""
    parts = [_parts(lin) for lin in linears]
    splits = tuple(w.shape[0] for w, _ in parts)
    w0 = parts[0][0]
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


def half_linear(linears: Sequence[nn.Module], x: Tensor) -> list[Tensor] | None:
    """``[lin(x) for lin in linears]`` from one float16 copy of their stacked weights, in x's dtype
    (the linears must share their input size); None where one of them is not a plain ``nn.Linear``
    or a ``LoRALinear`` (the caller then runs them itself).

    Float16 holds values up to 65,504: a product outside it comes back as inf or nan, which the
    caller checks for (``InfiniModel.decode`` checks the step's logits and redoes the step in
    float32)."""
    sources = [_sources(lin) for lin in linears]
    if any(s is None for s in sources):
        return None
    # checked on every call, so kept cheap: the merged LoRA weight is only asked for on a rebuild
    key = tuple(n for ts in sources for t in ts for n in (t.data_ptr(), t._version))  # type: ignore[union-attr]
    slot = _COPIES.get(linears[0])
    if slot is None:
        slot = _COPIES[linears[0]] = {}
    copy = slot.get(len(linears))
    if copy is None or copy[0] != key:
        copy = slot[len(linears)] = _copy(linears, key)
    _, weight, bias, splits = copy
    out = F.linear(x.to(HALF), weight, bias).to(x.dtype)
    return list(out.split(splits, dim=-1))


def products(linears: Sequence[nn.Module], x: Tensor, *, half: bool) -> list[Tensor]:
    """``[lin(x) for lin in linears]``: with ``half``, from their float16 copy (``half_linear``)
    where they have one; otherwise by running them."""
    out = half_linear(linears, x) if half else None
    return out if out is not None else [lin(x) for lin in linears]
