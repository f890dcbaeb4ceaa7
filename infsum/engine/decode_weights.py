"""Copies of a model's weights that decoded tokens read on a CPU: fewer bytes, same products.

A decoded token multiplies one row by every weight of the model once, so a decode step is bound by
the bytes it reads (540 MB in float32 for SmolLM2-135M, 270 MB in bfloat16). Two formats, one per
kind of CPU (``models.resolve_decode_weights`` picks it; docs/speed.md has the measurements):

- ``float16``, for float32 weights on a CPU without native bfloat16 (where infsum runs float32):
  float16 copies read half the bytes and ran 2.7x as fast for one row (198 against 532 us for a
  576 x 3,072 product; float16 products accumulate in float32, converted with F16C), while a
  segment of 2,048 rows ran 7x slower than in float32.
- ``int4``, for bfloat16 weights on a CPU with native bfloat16: torch's 4-bit CPU kernel
  (``_weight_int4pack_mm_for_cpu``: 4-bit integers q, a bfloat16 scale and zero per 32 inputs,
  ``(q - 8) * scale + zero``). A weight that lies on a 4-bit grid, as every linear weight of a
  Q4_1 GGUF does (the default model's), is copied as it is: one 4-bit product, 3.5 to 4.6x as fast
  as bfloat16 for one row. Any other weight (a LoRA-merged projection, the Q8_0 embedding that is
  also the LM head, a bfloat16 model from the hub) is rounded to 8 bits per 32 inputs (symmetric,
  the scale the group's largest magnitude / 127) and multiplied as two 4-bit products, its high and
  low halves, about 2x as fast as bfloat16. Either copy gives back every weight within ``GRID_TOL``
  of its group's largest magnitude: about two roundings to bfloat16, which the weights went through
  once already.

Streaming keeps the weights themselves: with many rows the products are faster from them.

``DecodeCopies`` holds one model's copies (``InfiniModel`` owns one, shared with the models
``with_config`` makes, so the copies go with the model). Products that share their input are fused
into one copy (q, k, v; gate, up); a LoRA linear is copied with its merged weight. A copy is built
on first use (or ahead of it, ``prepare``) and rebuilt when a weight changes (its storage or its version, as
``LoRALinear.merged_weight`` tracks them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infsum.engine.lora import LoRALinear

FLOAT16, INT4 = "float16", "int4"
FORMATS = (FLOAT16, INT4)
HALF = torch.float16
MAX_ROWS = 4  # copies win up to 4 rows a product (float16 1.3x at 4, 0.7x at 8; int4 1.7x at 4, 0.7x at 16)
GROUP = 32  # inputs per scale and zero of an int4 copy
GRID_TOL = 2.0**-7  # largest error of a copied weight, relative to the largest magnitude of its group
_CHUNK = 4096  # rows quantized at a time (bounds the float32 temporaries: the LM head has 49,152)
_TILES = 8  # the kernel's inner k tiles when packing

Group = tuple[nn.Module, ...]  # linears that share their input, copied as one stacked weight


class _Half:
    """A float16 copy of stacked weights (and biases), for float32 rows."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x.to(HALF), self.weight, self.bias).to(x.dtype)


class _Int4:
    """A 4-bit copy: one packed product (a weight on a 4-bit grid) or two whose sum is the weight
    (8 bits per 32 inputs, the high and the low halves), for bfloat16 rows."""

    def __init__(self, halves: list[tuple[Tensor, Tensor]], n_out: int, bias: Tensor | None) -> None:
        self.halves, self.n_out, self.bias = halves, n_out, bias

    def __call__(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        ys = [torch.ops.aten._weight_int4pack_mm_for_cpu(rows, w, GROUP, sz) for w, sz in self.halves]
        y = ys[0] if len(ys) == 1 else ys[0].float() + ys[1].float()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*x.shape[:-1], self.n_out)


_Copy = tuple[tuple[int, ...], _Half | _Int4 | None, tuple[int, ...]]  # key, copy (None: none), splits


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


def _stacked(
    parts: list[tuple[Tensor, Tensor | None]], dtype: torch.dtype, into: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """The weights stacked by rows in ``dtype`` (each copied into its rows: no temporary of the
    source dtype; written into ``into`` where it has the stacked shape and dtype) and the biases
    (zeros where a linear has none; None when no linear has one)."""
    splits = [w.shape[0] for w, _ in parts]
    w0 = parts[0][0]
    weight = into
    if weight is None or weight.shape != (sum(splits), w0.shape[1]) or weight.dtype != dtype:
        weight = torch.empty(sum(splits), w0.shape[1], dtype=dtype, device=w0.device)
    bias = None
    if any(b is not None for _, b in parts):
        bias = torch.zeros(sum(splits), dtype=dtype, device=w0.device)
    with torch.no_grad():
        for (w, b), rows, brows in zip(parts, weight.split(splits), _split(bias, splits), strict=True):
            rows.copy_(w)
            if b is not None and brows is not None:
                brows.copy_(b)
    return weight, bias


def _split(bias: Tensor | None, splits: list[int]) -> list[Tensor | None]:
    return [None] * len(splits) if bias is None else list(bias.split(splits))


def int4_grid(w: Tensor, *, packed: bool = False) -> tuple[Tensor, Tensor] | None:
    """The 4-bit grid ``w`` (n, k) lies on, as the kernel takes it: (q (n, k) int32 in 0..15, or
    packed for the kernel with ``packed``; scales and zeros (k / 32, n, 2) bfloat16) with
    ``(q - 8) * scale + zero`` within ``GRID_TOL`` of every weight's group's largest magnitude;
    None where some group is off its grid. A group's grid is its minimum to its maximum in 15
    steps, as Q4_1 (llama.cpp) quantizes, so a Q4_1 weight is found again exactly, up to the
    scales' rounding to bfloat16."""
    qs, szs = [], []
    for rows in w.detach().split(_CHUNK):
        g = rows.float().view(rows.shape[0], -1, GROUP)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        step = (hi - lo) / 15
        q = torch.round((g - lo) / torch.where(step == 0, 1.0, step)).clamp_(0, 15)
        scale, zero = step.to(torch.bfloat16).float(), (lo + 8 * step).to(torch.bfloat16).float()
        err = ((q - 8) * scale + zero - g).abs().amax(-1, keepdim=True)
        if bool((err > GRID_TOL * torch.maximum(lo.abs(), hi.abs())).any()):
            return None
        qs.append(_packed(q.to(torch.int32).view_as(rows), packed))
        szs.append(torch.cat([scale, zero], dim=-1).transpose(0, 1).to(torch.bfloat16))
    return torch.cat(qs), torch.cat(szs, dim=1).contiguous()


def int8_halves(w: Tensor, *, packed: bool = False) -> list[tuple[Tensor, Tensor]]:
    """``w`` (n, k) rounded to 8 bits per 32 inputs, q = round(w / d) in -127..127 with d = the
    group's largest magnitude / 127 rounded to bfloat16 (Q8_0's grid; error at most d / 2, about
    2^-8 of that magnitude, within ``GRID_TOL``), as two 4-bit grids (each as ``int4_grid`` gives one) whose
    products sum to its product: the high half, q // 16 with the scale 16 d, and the low half,
    q mod 16 with the scale d."""
    his, los, hszs, lszs = [], [], [], []
    for rows in w.detach().split(_CHUNK):
        g = rows.float().view(rows.shape[0], -1, GROUP)
        d = (g.abs().amax(-1, keepdim=True) / 127).to(torch.bfloat16).float()
        q = torch.round(g / torch.where(d == 0, 1.0, d)).clamp_(-127, 127).to(torch.int32)
        hi, lo = torch.div(q, 16, rounding_mode="floor"), q.remainder(16)  # q = 16 hi + lo, hi in -8..7
        his.append(_packed((hi + 8).view_as(rows), packed))  # the kernel's (q - 8) * scale + zero, zero 0
        los.append(_packed(lo.view_as(rows), packed))  # (lo - 8) * d + 8 d
        hszs.append(torch.cat([16 * d, torch.zeros_like(d)], dim=-1).transpose(0, 1))
        lszs.append(torch.cat([d, 8 * d], dim=-1).transpose(0, 1))
    halves = ((his, hszs), (los, lszs))
    return [(torch.cat(q), torch.cat(sz, dim=1).to(torch.bfloat16).contiguous()) for q, sz in halves]


def _packed(q: Tensor, pack: bool) -> Tensor:
    """4-bit values (n, k) int32, packed for the kernel with ``pack`` (rows are packed independently,
    so packing a chunk of rows at a time gives the bytes of packing all at once, tested: no int32
    values of a whole weight are held)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, _TILES) if pack else q


def _build(fmt: str, parts: list[tuple[Tensor, Tensor | None]], old: object) -> _Half | _Int4 | None:
    """The copy of the stacked ``parts`` in ``fmt`` (a float16 one rewritten in ``old``'s weight
    where it fits, so a rebuild does not hold two); None where the int4 kernel cannot take their
    shape (outputs a multiple of 16, inputs of 32)."""
    if fmt == FLOAT16:
        return _Half(*_stacked(parts, HALF, old.weight if isinstance(old, _Half) else None))
    n_out, n_in = sum(w.shape[0] for w, _ in parts), parts[0][0].shape[1]
    if n_out % 16 or n_in % GROUP:
        return None
    if len(parts) == 1:  # nothing to stack
        weight, bias = parts[0]
    else:
        weight, bias = _stacked(parts, parts[0][0].dtype)
    grid = int4_grid(weight, packed=True)
    halves = [grid] if grid is not None else int8_halves(weight, packed=True)
    return _Int4(halves, n_out, None if bias is None else bias.detach().float())


class DecodeCopies:
    """The copies of one model's linears that its decoded tokens read, in one of ``FORMATS``."""

    def __init__(self, fmt: str = FLOAT16) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"decode weights must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.format = fmt
        self._copies: dict[Group, _Copy] = {}

    def prepare(self, linears: Sequence[nn.Module]) -> None:
        """Build the copy of ``linears`` now if it is missing or stale (``linear`` would on its first
        use), so that it can be built before a step's activations are on the heap."""
        self._entry(tuple(linears))

    def linear(self, linears: Sequence[nn.Module], x: Tensor) -> list[Tensor] | None:
        """``[lin(x) for lin in linears]`` from one copy of their stacked weights, in x's dtype (the
        linears must share their input size); None where one of them is not a plain ``nn.Linear``
        or a ``LoRALinear``, or their shape does not fit the format (the caller then runs them
        itself). A copy that is missing or stale is built.

        Float16 holds values up to 65,504: a product outside it comes back as inf or nan, which the
        caller checks for (``InfiniModel.decode`` checks the step's logits and redoes the step from
        the weights themselves). The int4 copies compute in bfloat16, whose range is float32's."""
        entry = self._entry(tuple(linears))
        if entry is None:
            return None
        _, copy, splits = entry
        return None if copy is None else list(copy(x).split(splits, dim=-1))

    def _entry(self, group: Group) -> _Copy | None:
        """``group``'s copy, built where it is missing or stale; None where a linear is of a kind
        that has no copy."""
        key = _key(group)
        if key is None:
            return None
        entry = self._copies.get(group)
        if entry is None or entry[0] != key:
            old = self._copies.pop(group, (None, None))[1]  # stale: not kept beside the new one
            parts = [_parts(lin) for lin in group]
            splits = tuple(w.shape[0] for w, _ in parts)
            entry = self._copies[group] = (key, _build(self.format, parts, old), splits)
            del old
        return entry


def products(linears: Sequence[nn.Module], x: Tensor, copies: DecodeCopies | None = None) -> list[Tensor]:
    """``[lin(x) for lin in linears]``: from their copy in ``copies`` where there are copies and
    they can have one (``DecodeCopies.linear``); otherwise by running them."""
    out = copies.linear(linears, x) if copies is not None else None
    return out if out is not None else [lin(x) for lin in linears]
