"""The paper's compressive memory as pure functions on tensors (arXiv 2404.07143, section 2.1.2).

Equation numbers follow the paper: (3) the read (with sigma = ELU + 1), (4) the linear update,
(5) the delta update, (6) the gate. Nothing here knows about transformers or segments; ``model.py``
calls these once per layer per segment.

Beside the paper's rules, ``VARIANTS`` holds memory variants (feature map + normaliser) that address
why the paper's memory dilutes (docs/infini-attention.md): z grows with every token written, and
ELU + 1 features make every token match every query a little. ``"paper"`` is eqs (3)-(5) unchanged.

Axis letters: b batch, h key/value heads, n tokens (query heads of one kv group folded in for reads),
d d_key, e d_value. M and z are always float32, whatever the model's dtype (half precision overflows
after a few hundred thousand tokens, see docs/infini-attention.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from infsum.config import UPDATE_RULES
from infsum.config import UpdateRule as Rule
from infsum.errors import ConfigError

# the normaliser sigma(q) z is a sum of positive terms once anything was written; the floor only
# turns the "nothing written yet" case (z = 0, M = 0) into a read of exactly 0 instead of 0/0
_DENOM_FLOOR = 1e-30
# keeps 1/rms finite for a read of (almost) nothing, e.g. a query orthogonal to every stored key
_RMS_EPS = 1e-6


class ExactStore(NamedTuple):
    """One layer's store of exact tokens: at most N (key, value) pairs per kv head, kept beside the
    compressive memory (``MemoryConfig.exact_tokens``; LoLA, arXiv 2505.23666).

    ``k`` (b, h_kv, P, d) keys BEFORE RoPE and ``v`` (b, h_kv, P, d) values, in the model's dtype;
    ``score`` (b, h_kv, P) float32, the score each pair got when its segment was written; ``pos``
    (b, h_kv, P) int64, each pair's index in the stream. P <= N is the same for every layer and head
    (min(N, tokens written)); every head keeps its pairs in stream order. ``seen`` counts the tokens
    written so far (the stream index of the next one).
    """

    k: Tensor
    v: Tensor
    score: Tensor
    pos: Tensor
    seen: int

    @property
    def size(self) -> int:
        """P, the pairs held per kv head."""
        return self.k.shape[2]

    def detach(self) -> ExactStore:
        """The same store cut from the autograd graph."""
        return ExactStore(self.k.detach(), self.v.detach(), self.score, self.pos, self.seen)

    def to(self, device: torch.device | str) -> ExactStore:
        """The same store on ``device``."""
        return ExactStore(
            self.k.to(device), self.v.to(device), self.score.to(device), self.pos.to(device), self.seen
        )


class MemoryState(NamedTuple):
    """Per-layer memories, a value passed in and out of the model (``None`` = empty memory).

    ``M[i]`` is layer i's (b, h_kv, d_k, d_v) associative matrix, ``z[i]`` its (b, h_kv, d_k)
    normaliser; both float32; both empty tuples when the memory is off and only a store is kept.
    ``store[i]`` is layer i's ``ExactStore`` (an empty tuple when ``exact_tokens`` is 0). Tensors are
    never modified in place.
    """

    M: tuple[Tensor, ...]
    z: tuple[Tensor, ...]
    store: tuple[ExactStore, ...] = ()

    @property
    def n_layers(self) -> int:
        """How many layers hold a memory or a store."""
        return len(self.M) or len(self.store)

    def detach(self) -> MemoryState:
        """The same memory cut from the autograd graph (truncated back-propagation through time)."""
        return MemoryState(
            tuple(m.detach() for m in self.M),
            tuple(z.detach() for z in self.z),
            tuple(s.detach() for s in self.store),
        )

    def to(self, device: torch.device | str) -> MemoryState:
        """The same memory on ``device`` (still float32)."""
        return MemoryState(
            tuple(m.to(device) for m in self.M),
            tuple(z.to(device) for z in self.z),
            tuple(s.to(device) for s in self.store),
        )


def sigma(x: Tensor) -> Tensor:
    """ELU + 1, the paper's non-linearity; computed in float32 so memory math never runs in half."""
    return F.elu(x.float()) + 1.0  # eq (3)


def _retrieve(sx: Tensor, M: Tensor, z: Tensor) -> Tensor:
    """sigma(x) M / (sigma(x) z) for sx (b, h, n, d), M (b, h, d, e), z (b, h, d) -> (b, h, n, e)."""
    num = sx @ M  # (b, h, n, e)
    den = (sx @ z.unsqueeze(-1)).clamp_min(_DENOM_FLOOR)  # (b, h, n, 1)
    return num / den


def read_memory(sq: Tensor, M: Tensor | None, z: Tensor | None) -> Tensor | None:
    """A_mem = sigma(Q) M_{s-1} / (sigma(Q) z_{s-1}) (eq 3), float32.

    ``sq`` is sigma(Q) shaped (b, h_kv, n, d_k), i.e. the query heads of each kv group folded into
    n. An empty memory reads as 0 (the paper's z = 0 case); it is returned as ``None`` so that
    ``gate`` skips the multiply.
    """
    if M is None or z is None:
        return None
    return _retrieve(sq, M, z)  # eq (3)


def update_memory(
    sk: Tensor, v: Tensor, M: Tensor | None, z: Tensor | None, *, rule: Rule = "delta"
) -> tuple[Tensor, Tensor]:
    """Write one segment: sk = sigma(K) (b, h_kv, n, d_k), v (b, h_kv, n, d_v) -> new (M, z), float32.

    linear: M_s = M_{s-1} + sigma(K)^T V (eq 4); delta: M_s = M_{s-1} + sigma(K)^T (V - sigma(K) M_{s-1}
    / (sigma(K) z_{s-1})) (eq 5). z_s = z_{s-1} + sum_t sigma(K_t) for both.
    """
    v = v.float()
    if M is not None and z is not None and rule == "delta":
        v = v - _retrieve(sk, M, z)  # eq (5): write only what memory does not already return
    elif rule not in UPDATE_RULES:
        raise ValueError(f"unknown memory update rule {rule!r}")  # internal: MemoryConfig checks the rule
    dM = sk.transpose(-1, -2) @ v  # (b, h, d, e), eq (4)/(5)
    dz = sk.sum(dim=-2)  # (b, h, d)
    if M is None or z is None:
        return dM, dz
    return M + dM, z + dz


def gate(a_mem: Tensor | None, a_dot: Tensor, beta: Tensor) -> Tensor:
    """A = sigmoid(beta) A_mem + (1 - sigmoid(beta)) A_dot (eq 6), in a_dot's dtype.

    a_mem, a_dot (b, h_q, n, d_v); beta (h_q,), one scalar per query head. ``a_mem=None`` (empty
    memory) reads as 0.
    """
    g = torch.sigmoid(beta.float()).view(-1, 1, 1)  # (h_q, 1, 1) broadcasts over b, n, d_v
    if a_mem is None:
        return ((1.0 - g) * a_dot.float()).to(a_dot.dtype)
    return (g * a_mem + (1.0 - g) * a_dot.float()).to(a_dot.dtype)  # eq (6)


# ---- the exact-token store -----------------------------------------------------------------------


def residual_score(v: Tensor, held: Tensor | None) -> Tensor:
    """LoLA's score (arXiv 2505.23666): ||v - retrieved||^2 per token, float32, v (b, h, n, e) ->
    (b, h, n). ``held`` is what the memory returns for the tokens' keys before their segment is
    written (the delta rule's correction term, eq 5); ``None`` (memory empty or off) scores ||v||^2:
    with nothing to reconstruct from, every value is all error."""
    r = v.float() if held is None else v.float() - held
    return r.pow(2).sum(dim=-1)


def select_store(
    store: ExactStore | None, k: Tensor, v: Tensor, score: Tensor, capacity: int, *, sinks: int = 0
) -> ExactStore:
    """Write one segment's candidates into the store -> the new store of at most ``capacity`` pairs.

    k, v (b, h, n, d) keys before RoPE and values, score (b, h, n) float32. The candidates compete
    with the stored pairs on their scores and the weakest are dropped, per batch row and kv head; the
    survivors stay in stream order (stored pairs precede the segment, and the kept indices are sorted).
    The first ``sinks`` tokens of the stream are always kept (attention sinks, StreamingLLM, arXiv
    2309.17453: the model parks attention on them), with their own scores recorded.
    """
    b, h, n, _ = k.shape
    seen = store.seen if store is not None else 0
    pos = torch.arange(seen, seen + n, device=k.device).expand(b, h, n)
    if store is not None:
        k, v = torch.cat([store.k, k], dim=2), torch.cat([store.v, v], dim=2)
        score, pos = torch.cat([store.score, score], dim=2), torch.cat([store.pos, pos], dim=2)
    if k.shape[2] > capacity:
        rank = score.masked_fill(pos < sinks, float("inf")) if sinks else score
        keep = rank.topk(capacity, dim=-1, sorted=False).indices.sort(dim=-1).values  # (b, h, N)
        k = k.gather(2, keep[..., None].expand(-1, -1, -1, k.shape[-1]))
        v = v.gather(2, keep[..., None].expand(-1, -1, -1, v.shape[-1]))
        score, pos = score.gather(2, keep), pos.gather(2, keep)
    return ExactStore(k, v, score, pos.contiguous(), seen + n)


# ---- variants -----------------------------------------------------------------------------------

Normaliser = Literal["z", "corrected-z", "none", "rms"]


def l2_features(x: Tensor) -> Tensor:
    """x / ||x|| over d_k (per head, per token), float32: unit keys make the delta rule exact."""
    return F.normalize(x.float(), dim=-1)


@dataclass(frozen=True)
class MemoryVariant:
    """A memory variant: the feature map phi applied to Q and K, and how the read is normalised.

    normaliser ``z``: the paper's phi(q) M / (phi(q) z), z += sum_t phi(k_t) (eqs 3-5).
    ``corrected-z``: the same read, but z += sum_t gamma_t phi(k_t) with gamma_t = max(0, 1 -
    phi(k_t) z / ||phi(k_t)||^2) (ARMT's correction): a key whose direction z already holds adds
    nothing, so re-writing stored facts and repeated filler stop inflating the denominator.
    ``none``: phi(q) M with no denominator, ``rms``: phi(q) M divided by its RMS over d_v (DeltaNet's
    read normalisation, without a learned gain: the gate and W_O set the scale). With these two, z
    still accumulates sum_t phi(k_t), unused by the read, so every variant's state has one layout.
    """

    name: str
    features: Callable[[Tensor], Tensor]
    normaliser: Normaliser
    summary: str

    def read(self, fq: Tensor, M: Tensor | None, z: Tensor | None) -> Tensor | None:
        """A_mem for fq = phi(Q) (b, h_kv, n, d_k), float32; ``None`` for an empty memory."""
        if M is None or z is None:
            return None
        if self.normaliser in ("z", "corrected-z"):
            return read_memory(fq, M, z)
        out = fq @ M  # (b, h, n, e)
        if self.normaliser == "rms":
            out = out * torch.rsqrt(out.pow(2).mean(dim=-1, keepdim=True) + _RMS_EPS)
        return out

    def held(self, fk: Tensor, M: Tensor | None, z: Tensor | None) -> Tensor | None:
        """What the memory returns for fk = phi(K) (b, h_kv, n, d_k), float32: the term the delta rule
        subtracts from V (the z ratio for ``z``/``corrected-z``, phi(K) M for ``none``/``rms``);
        ``None`` for an empty memory."""
        if M is None or z is None:
            return None
        return _retrieve(fk, M, z) if self.normaliser in ("z", "corrected-z") else fk @ M

    def update(
        self, fk: Tensor, v: Tensor, M: Tensor | None, z: Tensor | None, *, rule: Rule = "delta"
    ) -> tuple[Tensor, Tensor]:
        """Write one segment, fk = phi(K) (b, h_kv, n, d_k), v (b, h_kv, n, d_v) -> new (M, z), float32.

        linear: M += phi(K)^T V; delta: M += phi(K)^T (V - retrieved), where retrieved is what the
        memory returns for phi(K) before this segment (the z ratio for ``z``/``corrected-z``, phi(K) M
        for ``none``/``rms``: with unit keys that makes a re-write of key k replace its value exactly).
        """
        if self.normaliser == "z":
            return update_memory(fk, v, M, z, rule=rule)  # the paper's equations, unchanged
        if rule not in UPDATE_RULES:
            raise ValueError(f"unknown memory update rule {rule!r}")  # internal: MemoryConfig checks the rule
        v = v.float()
        if M is None or z is None:
            return fk.transpose(-1, -2) @ v, fk.sum(dim=-2)
        if rule == "delta":
            v = v - self.held(fk, M, z)
        dz = fk.sum(dim=-2)  # (b, h, d)
        if self.normaliser == "corrected-z":
            sq_norm = fk.pow(2).sum(dim=-1, keepdim=True).clamp_min(_DENOM_FLOOR)  # (b, h, n, 1)
            g = (1.0 - (fk @ z.unsqueeze(-1)) / sq_norm).clamp_min(0.0)  # share of phi(k) z lacks
            dz = (g * fk).sum(dim=-2)
        return M + fk.transpose(-1, -2) @ v, z + dz


VARIANTS: dict[str, MemoryVariant] = {
    v.name: v
    for v in (
        MemoryVariant("paper", sigma, "z", "ELU+1 features, z sums every key (the paper)"),
        MemoryVariant("armt", sigma, "corrected-z", "ELU+1 features, z grows only by what it lacks (ARMT)"),
        MemoryVariant("l2", l2_features, "none", "L2-normalised features, read without a denominator"),
        MemoryVariant("l2-rms", l2_features, "rms", "L2-normalised features, read RMS-normalised"),
    )
}


def get_variant(name: str) -> MemoryVariant:
    """The registered variant ``name``; ConfigError naming the choices if there is none."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown memory variant {name!r}: choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
