"""Running a loaded Hugging Face Llama-family model's layers with Infini memory beside local attention.

The only module that knows HF's module layout. ``InfiniModel`` does not swap or hook HF's attention:
it runs the HF model's own submodules (the embedding, each layer's norms, q/k/v/o projections and
MLP, the final norm, the LM head and the model's rotary embedding) layer by layer, with the paper's
memory beside the local attention. So wrapping changes nothing in the HF model (and needs no
restore), memory is a value in and out, and the code does not depend on HF's attention internals,
which change between versions. Low-rank adapters are the exception: ``engine/lora.py`` wraps the
HF model's projections in place when an adapter with LoRA weights is loaded (``engine/adapter.py``)
or trained, so every InfiniModel on that HF model then runs them.

Per layer and segment (docs/infini-attention.md): Q, K, V from the layer's projections; the memory
is read with sigma(Q) and written with sigma(K), V BEFORE RoPE; RoPE and causal softmax attention
(SDPA) only on the local path, with positions restarting at 0 in every segment; one gate scalar
beta per query head mixes the two; then W_O.

With ``exact_tokens`` = N > 0, each layer also keeps an ``ExactStore`` of at most N exact (key,
value) pairs per kv head (docs/store.md). The local attention then runs ONE softmax over the stored
pairs and the segment, so the model retrieves an earlier passage with its own trained attention. The
stored keys are kept before RoPE and rotated at use: with ``exact_positions="before"`` the P stored
keys take positions 0..P-1 (stream order) and the segment P.., so a store holding every token is
exactly full causal attention; with ``"fixed"`` (the default: it retrieved more passkeys,
docs/store.md) all stored keys take position 0 and the segment 1.., so every stored key looks near.
When a segment is written, its tokens compete with the stored ones on a score fixed at that moment
and the weakest are dropped: ``"residual"``, LoLA's ||v - retrieved||^2 (arXiv 2505.23666),
``"residual-after"``, the same error against the memory once it holds the segment, or
``"attention"``, the mean attention a key received from the segment's queries that see it, relative
to uniform attention (H2O, arXiv 2306.14048; both normalisations keep early keys from winning only
because they are early).

Axis letters: b batch, n tokens, s cache slots, L layers, h query heads, k key/value heads,
g query heads per kv head, d head dim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from infsum.config import MemoryConfig
from infsum.engine.decode_weights import FLOAT16, FORMATS, MAX_ROWS, DecodeCopies, Group, products
from infsum.engine.memory import ExactStore, MemoryState, gate, get_variant, residual_score, select_store
from infsum.errors import ConfigError, PatchError

log = logging.getLogger("infsum")

SUPPORTED = ("llama", "mistral", "qwen2")  # config.model_type values with the Llama layer layout
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
# HF norms computing x * rsqrt(mean(x^2) + eps) * weight in float32, what F.rms_norm computes
_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
# torch >= 2.5 lets SDPA share each kv head among its g query heads without copying K and V
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

Logits = Literal["all", "last", "none"]
# what forward_segments keeps of one segment: f(final hidden states (b, n, hidden), its columns of ids)
PerSegment = Callable[[Tensor, slice], Any]
_SCORE_CHUNK = 256  # queries per block when the attention score materialises softmax weights
_ATTN_BLOCK = 128  # queries per block of _blocked_causal (64 and 128 ran alike here, 256 at half speed)


@dataclass
class LocalCache:
    """Preallocated keys and values of the current local segment, for generation.

    ``k`` holds RoPE-rotated keys (local attention), ``k_raw`` the same keys before RoPE (what the
    memory is written with when the segment is full), ``v`` the values; each (L, b, k, s, d) in the
    model's dtype. ``pos`` = how many slots are filled. With a store, ``score`` (L, b, k, s) float32
    gathers each cached token's store score as it is decoded (for ``commit``), and store pairs at or
    after stream index ``hide_from`` are hidden from the attention (they are re-read in this cache).
    Mutable on purpose: owned by one generation.
    """

    k: Tensor
    k_raw: Tensor
    v: Tensor
    pos: int = 0
    score: Tensor | None = None
    hide_from: int | None = None

    @property
    def size(self) -> int:
        """Slots in the cache (the segment length)."""
        return self.k.shape[3]


class InfiniModel(nn.Module):
    """A loaded HF Llama-family causal LM with one Infini memory per layer per kv head.

    ``gates`` (L, h) holds the paper's beta, one per query head per layer (float32 Parameter);
    ``infini_state_dict`` lists everything Infini-specific that is trained and saved as an adapter.
    ``decode_weights``: None, or the format of the weight copies its decoded tokens read
    (``engine/decode_weights.py``: "float16" for a float32 model, "int4" for a bfloat16 one;
    ``ready`` sets it from the loaded model).
    """

    def __init__(self, hf_model: nn.Module, cfg: MemoryConfig) -> None:
        super().__init__()
        _check_supported(hf_model, cfg)
        c = hf_model.config
        self.hf = hf_model
        self.cfg = cfg
        self.variant = get_variant(cfg.variant)  # feature map, read and update of the memory
        self.name = str(getattr(c, "_name_or_path", "") or getattr(c, "model_type", "model"))
        self.n_layers = c.num_hidden_layers
        self.n_heads = c.num_attention_heads
        self.n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.groups = self.n_heads // self.n_kv
        attn0 = hf_model.model.layers[0].self_attn
        self.scale = float(getattr(attn0, "scaling", self.head_dim**-0.5))
        self.attn_dropout = float(getattr(c, "attention_dropout", 0.0) or 0.0)
        device = next(hf_model.parameters()).device
        beta = torch.full((self.n_layers, self.n_heads), float(cfg.gate_init), device=device)
        self.gates = nn.Parameter(beta)  # (L, h) one beta per query head per layer
        self._consts: dict[tuple[Any, ...], Tensor] = {}  # rope tables and masks, built once per shape
        self._decode_weights: str | None = None
        self._copies = DecodeCopies()  # the weight copies decoded tokens read (decode_weights)

    # ---- public API -------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        state: MemoryState | None = None,
        *,
        logits: Logits = "all",
        write: bool = True,
    ) -> tuple[Tensor | None, MemoryState | None]:
        """Run one segment (b, n) at local positions 0..n-1 (after the store's, if any) -> (logits,
        new memory state).

        The segment reads ``state`` (written by earlier segments) and, with ``write``, is added to
        it; ``logits`` picks (b, n, V), the last position's (b, V), or None (reading only).
        Differentiable; the returned state is a new value (``state`` is not changed).
        """
        return self._run(input_ids, state, pos=0, cache=None, write=write, logits=logits)

    def forward_segments(
        self,
        ids: Tensor,
        state: MemoryState | None = None,
        *,
        checkpoint: bool = False,
        each: PerSegment | None = None,
    ) -> tuple[list[Any], MemoryState | None]:
        """Run (b, T) ``ids`` in consecutive segments of ``cfg.segment_len`` (the last may be shorter),
        each reading the memory the earlier ones wrote -> (one value per segment, final state).

        The one segment loop of training and reading. ``each(h, cols)`` turns a segment's final
        hidden states h (b, n, hidden) (before the final norm; ``logits(h)`` gives its logits) and
        its columns of ``ids`` into the value kept for it; the default keeps the logits (b, n, V).
        A caller that needs no logits for a segment skips the LM head by not calling ``logits``.
        Differentiable (back-propagation through time). With ``checkpoint``, each segment's
        activations, ``each`` included, are recomputed in the backward pass (gradient checkpointing
        per segment, as in the paper), so memory grows with one segment plus what ``each`` returns.
        """
        each = each or (lambda h, _cols: self.logits(h))
        outs = []
        for start in range(0, ids.shape[1], self.cfg.segment_len):
            cols = slice(start, start + self.cfg.segment_len)
            if checkpoint and torch.is_grad_enabled():
                out, state = _checkpoint(self._segment, ids[:, cols], state, cols, each, use_reentrant=False)
            else:
                out, state = self._segment(ids[:, cols], state, cols, each)
            outs.append(out)
        return outs, state

    def logits(self, h: Tensor, *, copies: bool = False) -> Tensor:
        """The LM head on final hidden states (..., hidden) -> (..., V); with ``copies``, from its
        copy (decoded tokens, ``decode_weights``)."""
        return self._products((self.hf.lm_head,), _norm(self.hf.model.norm, h, copies), copies)[0]

    @property
    def decode_weights(self) -> str | None:
        """None (decoded tokens read the weights), or the format of the copies they read: "float16"
        (of float32 weights) or "int4" (of bfloat16 weights; ``engine/decode_weights.py``)."""
        return self._decode_weights

    @decode_weights.setter
    def decode_weights(self, fmt: str | None) -> None:
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"decode_weights must be None or one of {', '.join(FORMATS)}, not {fmt!r}")
        if fmt is not None and fmt != self._copies.format:
            self._copies = DecodeCopies(fmt)
        self._decode_weights = fmt

    def with_config(self, cfg: MemoryConfig) -> InfiniModel:
        """The same model under another MemoryConfig: the HF weights (and any LoRA on them) and the
        gates are shared, not copied, so training or loading an adapter into either changes both.
        ``cfg.gate_init`` is ignored (the gates exist already)."""
        if cfg == self.cfg:
            return self
        other = InfiniModel(self.hf, cfg)
        other.gates = self.gates  # share the trained beta
        other.name = self.name
        other._copies = self._copies
        other.decode_weights = self.decode_weights
        return other

    def new_cache(self, batch: int = 1) -> LocalCache:
        """An empty preallocated local cache of one segment for ``batch`` streams."""
        p = next(self.hf.parameters())
        shape = (self.n_layers, batch, self.n_kv, self.cfg.segment_len, self.head_dim)
        score = None
        if self.cfg.exact_tokens:
            score = torch.zeros(shape[:-1], dtype=torch.float32, device=p.device)
        kv = (torch.empty(shape, dtype=p.dtype, device=p.device) for _ in range(3))
        return LocalCache(*kv, score=score)

    def decode(self, input_ids: Tensor, state: MemoryState | None, cache: LocalCache) -> Tensor:
        """Continue the local segment in ``cache`` with (b, m) tokens -> last position's logits (b, V).

        The tokens take local positions cache.pos.. and are appended to the cache; memory and store
        are only read (call ``commit`` when the cache is full). Raises if they do not fit in the segment.
        """
        m = input_ids.shape[1]
        assert cache.pos + m <= cache.size, "decode past the segment end: commit the cache first"
        copies = self._reads_copies(input_ids)
        half = copies and self.decode_weights == FLOAT16  # float16 ends at 65,504: checked
        sums = None  # the attention score sums into earlier slots: kept, in case the step is run again
        if half and self.cfg.exact_score == "attention" and cache.score is not None:
            sums = cache.score.clone()
        pos = cache.pos
        out, _ = self._run(input_ids, state, pos=pos, cache=cache, write=False, logits="last", copies=copies)
        if half and not bool(torch.isfinite(out).all()):  # a product left float16's range
            log.warning("a decoded token overflowed float16: decoding from the float32 weights from here on")
            self.decode_weights = None
            if sums is not None:
                cache.score.copy_(sums)  # type: ignore[union-attr]
            out, _ = self._run(input_ids, state, pos=pos, cache=cache, write=False, logits="last")
        cache.pos += m
        return out

    def prepare_decode(self) -> bool:
        """Build the weight copies decoded tokens read (``decode_weights``) now, where they are
        missing or stale, rather than on the first decoded token -> whether there are copies. The
        reader calls it before a prompt's prefill and gives the heap back after it: built after the
        prefill, the copies' temporaries stacked on its freed activations (docs/speed.md)."""
        if self.decode_weights is None:
            return False
        for layer in self.hf.model.layers:
            attn, mlp = layer.self_attn, _llama_mlp(layer.mlp)
            self._copies.prepare((attn.q_proj, attn.k_proj, attn.v_proj))
            self._copies.prepare((attn.o_proj,))
            if mlp is not None:
                self._copies.prepare(mlp[:2])  # gate and up
                self._copies.prepare(mlp[2:3])  # down
        self._copies.prepare((self.hf.lm_head,))
        return True

    def commit(self, state: MemoryState | None, cache: LocalCache) -> MemoryState | None:
        """Write the cached local segment into memory (and store) and empty the cache -> new state."""
        n = cache.pos
        cache.pos = 0
        store_on = self.cfg.exact_tokens > 0 and cache.score is not None
        if not (self.cfg.enabled or store_on) or n == 0:
            return state
        assert cache.hide_from is None, "a cache that re-reads stored tokens is never committed"
        Ms, zs, stores = [], [], []
        after = store_on and self.cfg.exact_score == "residual-after"
        for i in range(self.n_layers):
            M, z, st = self._layer_state(state, i)
            k, v = cache.k_raw[i, :, :, :n], cache.v[i, :, :, :n]  # (b, k, n, d) keys before RoPE
            fk = self.variant.features(k) if self.cfg.enabled or after else None
            if self.cfg.enabled:
                M, z = self.variant.update(fk, v, M, z, rule=self.cfg.update)
                Ms.append(M)
                zs.append(z)
            if store_on:
                score = cache.score[i, :, :, :n]  # type: ignore[index]
                if self.cfg.exact_score == "attention":  # sums -> mean over the queries that saw each key
                    score = score / torch.arange(n, 0, -1, device=score.device)
                elif after:  # against the memory just written
                    score = self._residual_after(fk, v, M, z)
                stores.append(
                    select_store(st, k, v, score, self.cfg.exact_tokens, sinks=self.cfg.exact_sinks)
                )
        return self._new_state(state, Ms, zs, stores)

    def infini_state_dict(self) -> dict[str, Tensor]:
        """The Infini-specific trained tensors, as saved in an adapter: the gates and any low-rank
        adapter weights added to the HF model (parameter names containing ``.lora_``)."""
        return {k: p.detach() for k, p in self.named_parameters() if k == "gates" or ".lora_" in k}

    # ---- the layer loop ---------------------------------------------------------------------

    def _segment(
        self, ids: Tensor, state: MemoryState | None, cols: slice, each: PerSegment
    ) -> tuple[Any, MemoryState | None]:
        """One segment of ``forward_segments`` (the unit that is checkpointed)."""
        h, state = self._layers(ids, state, pos=0, cache=None, write=True)
        return each(h, cols), state

    def _run(
        self,
        ids: Tensor,
        state: MemoryState | None,
        *,
        pos: int,
        cache: LocalCache | None,
        write: bool,
        logits: Logits,
        copies: bool = False,
    ) -> tuple[Tensor | None, MemoryState | None]:
        """ids (b, n) at local positions pos..pos+n-1 through every layer and, unless ``logits`` is
        "none", the LM head; with ``copies``, the weight products from the decode copies."""
        h, new_state = self._layers(ids, state, pos=pos, cache=cache, write=write, copies=copies)
        if logits == "none":
            return None, new_state
        if logits == "last":
            h = h[:, -1]
        return self.logits(h, copies=copies), new_state

    def _reads_copies(self, ids: Tensor) -> bool:
        """Whether decoding ``ids`` reads the weight copies: ``decode_weights`` asks for them, no
        gradients, and few rows (with many, the weights' own products are the faster ones)."""
        return self.decode_weights is not None and ids.numel() <= MAX_ROWS and not torch.is_grad_enabled()

    def _products(self, linears: Group, x: Tensor, copies: bool) -> list[Tensor]:
        """``[lin(x) for lin in linears]``; with ``copies``, from their decode copy."""
        return products(linears, x, self._copies if copies else None)

    def _mlp(self, mlp: nn.Module, x: Tensor, copies: bool) -> Tensor:
        """The layer's MLP on x; with ``copies``, a Llama-style MLP (down(act(gate(x)) * up(x)))
        from the decode copies, gate and up in one product."""
        parts = _llama_mlp(mlp) if copies else None
        if parts is None:
            return mlp(x)
        gate_proj, up_proj, down_proj, act = parts
        g, u = self._products((gate_proj, up_proj), x, True)
        return self._products((down_proj,), act(g) * u, True)[0]

    def _layers(
        self,
        ids: Tensor,
        state: MemoryState | None,
        *,
        pos: int,
        cache: LocalCache | None,
        write: bool,
        copies: bool = False,
    ) -> tuple[Tensor, MemoryState | None]:
        """ids (b, n) at local positions pos..pos+n-1 through every layer -> (final hidden states
        before the norm (b, n, hidden), new memory state); with ``copies``, the weight products from
        the decode copies."""
        m = self.hf.model
        h = m.embed_tokens(ids)  # (b, n, hidden)
        held = state.store[0].size if state is not None and state.store else 0
        offset = held if self.cfg.exact_positions == "before" else min(held, 1)
        cos, sin = self._rope(offset + pos, ids.shape[1], h)
        # stored keys before the segment, in stream order, or all at position 0 (see the module doc)
        store_rope = self._rope(0, held, h) if self.cfg.exact_positions == "before" else self._rope(0, 1, h)
        write_memory = write and self.cfg.enabled
        write_store = write and self.cfg.exact_tokens > 0
        Ms, zs, stores = [], [], []
        for i, layer in enumerate(m.layers):
            M, z, st = self._layer_state(state, i)
            a, M, z, st = self._attention(
                i,
                layer.self_attn,
                _norm(layer.input_layernorm, h, copies),
                (cos, sin),
                M,
                z,
                st,
                store_rope,
                pos=pos,
                cache=cache,
                write_memory=write_memory,
                write_store=write_store,
                copies=copies,
            )
            h = h + a
            h = h + self._mlp(layer.mlp, _norm(layer.post_attention_layernorm, h, copies), copies)
            if write_memory:
                Ms.append(M)
                zs.append(z)
            if write_store and st is not None:
                stores.append(st)
        return h, self._new_state(state, Ms, zs, stores)

    @staticmethod
    def _layer_state(
        state: MemoryState | None, i: int
    ) -> tuple[Tensor | None, Tensor | None, ExactStore | None]:
        """Layer i's (M, z, store), each None where the state holds none."""
        if state is None:
            return None, None, None
        M, z = (state.M[i], state.z[i]) if state.M else (None, None)
        return M, z, state.store[i] if state.store else None

    @staticmethod
    def _new_state(
        state: MemoryState | None, Ms: list[Tensor], zs: list[Tensor], stores: list[ExactStore]
    ) -> MemoryState | None:
        """``state`` with the memories and stores written this segment replaced (an empty list keeps
        what ``state`` had); None while nothing was ever written (memory off, no store)."""
        if not Ms and not stores:
            return state
        old = state or MemoryState((), ())
        return MemoryState(tuple(Ms) or old.M, tuple(zs) or old.z, tuple(stores) or old.store)

    def _attention(
        self,
        i: int,
        attn: nn.Module,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        M: Tensor | None,
        z: Tensor | None,
        st: ExactStore | None,
        store_rope: tuple[Tensor, Tensor],
        *,
        pos: int,
        cache: LocalCache | None,
        write_memory: bool,
        write_store: bool,
        copies: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, ExactStore | None]:
        """One layer's Infini-attention on x (b, n, hidden) -> (output, M, z, store); with
        ``copies``, the projections from the decode copies (q, k and v in one product)."""
        b, n, _ = x.shape
        kh, g, d = self.n_kv, self.groups, self.head_dim
        q, k, v = self._products((attn.q_proj, attn.k_proj, attn.v_proj), x, copies)
        q = q.view(b, n, kh * g, d).transpose(1, 2)  # (b, h, n, d)
        k = k.view(b, n, kh, d).transpose(1, 2)  # (b, k, n, d)
        v = v.view(b, n, kh, d).transpose(1, 2)  # (b, k, n, d)

        a_mem, score = None, None
        # store scores are taken for a segment being written, or for tokens entering the cache
        scoring = self.cfg.exact_tokens > 0 and (write_store or cache is not None)
        if self.cfg.enabled and M is not None:
            # query head j belongs to kv head j // g (HF's repeat_kv): fold the g heads into n
            fq = self.variant.features(q.reshape(b, kh, g * n, d))  # (b, k, g*n, d), before RoPE
            a_mem = self.variant.read(fq, M, z).view(b, kh * g, n, d)  # read before the update
        residual = scoring and self.cfg.exact_score == "residual"
        after = write_store and self.cfg.exact_score == "residual-after"
        # phi(K), computed once for whatever of the memory write and the residual scores needs it
        fk = self.variant.features(k) if write_memory or after or (residual and self.cfg.enabled) else None
        if residual:
            # LoLA: what the memory, as it was before this segment, fails to give back for each key
            score = residual_score(v, self.variant.held(fk, M, z) if self.cfg.enabled else None)  # (b, k, n)
        if write_memory:
            M, z = self.variant.update(fk, v, M, z, rule=self.cfg.update)
        if after:
            score = self._residual_after(fk, v, M, z)

        qr, kr = _rotate(q, *rope), _rotate(k, *rope)  # RoPE only on the local path
        k_seg, v_seg = kr, v
        if cache is not None:
            cache.k[i, :, :, pos : pos + n] = kr
            cache.k_raw[i, :, :, pos : pos + n] = k
            cache.v[i, :, :, pos : pos + n] = v
            k_seg, v_seg = cache.k[i, :, :, : pos + n], cache.v[i, :, :, : pos + n]
        prefix, visible = 0, None
        if st is not None and st.size:  # the stored pairs join the same softmax, ahead of the segment
            prefix = st.size
            k_seg = torch.cat([_rotate(st.k, *store_rope), k_seg], dim=2)
            v_seg = torch.cat([st.v, v_seg], dim=2)
            if cache is not None and cache.hide_from is not None:
                visible = st.pos < cache.hide_from  # (b, k, P)
        a_dot = self._sdpa(qr, k_seg, v_seg, pos=pos, prefix=prefix, visible=visible)  # (b, h, n, d)

        if scoring and self.cfg.exact_score == "attention":
            received = self._received(qr, k_seg, pos=pos, prefix=prefix, visible=visible)  # (b, k, pos+n)
            if cache is None:  # the whole segment: mean over the n - j queries that see key j
                score = received / torch.arange(n, 0, -1, device=received.device)
            else:  # decoding: sums so far, divided at commit
                assert cache.score is not None
                cache.score[i, :, :, pos : pos + n] = 0.0
                cache.score[i, :, :, : pos + n] += received
        elif cache is not None and score is not None:
            assert cache.score is not None
            cache.score[i, :, :, pos : pos + n] = score
        if write_store:
            assert score is not None
            st = select_store(st, k, v, score, self.cfg.exact_tokens, sinks=self.cfg.exact_sinks)

        # memory off (the control): plain local attention, no gate scaling
        a = gate(a_mem, a_dot, self.gates[i]) if self.cfg.enabled else a_dot  # (b, h, n, d)
        a = a.transpose(1, 2).reshape(b, n, kh * g * d)
        return self._products((attn.o_proj,), a, copies)[0], M, z, st

    def _residual_after(self, fk: Tensor, v: Tensor, M: Tensor | None, z: Tensor | None) -> Tensor:
        """The ``residual-after`` score of one segment's key features fk = phi(K) and values v
        (b, k, n, d), float32 (b, k, n): ||v - retrieved||^2 with the memory (M, z) that already holds
        the segment. With the memory off, the segment alone is written into an empty memory for the
        score, so a token is scored by how far it stands from what its own segment makes typical."""
        if not self.cfg.enabled:
            M, z = self.variant.update(fk, v, None, None, rule=self.cfg.update)
        return residual_score(v, self.variant.held(fk, M, z))

    def _received(self, q: Tensor, k: Tensor, *, pos: int, prefix: int, visible: Tensor | None) -> Tensor:
        """The attention weight each local key receives, times the number of keys its query sees
        (1 = uniform attention), summed over the queries q (b, h, n, d) at local positions pos.. and
        averaged over the g query heads of its kv group -> (b, k, pos+n) float32. The softmax is the
        one ``_sdpa`` takes, over k (b, k, prefix+pos+n, d); computed in blocks of queries so the
        weights of a whole segment are never held at once."""
        b, h, n, d = q.shape
        kh, g = self.n_kv, self.groups
        qg = q.reshape(b, kh, g, n, d).float()
        kt = k.float().transpose(-1, -2)[:, :, None]  # (b, k, 1, d, S)
        mask = self._local_mask(n, pos, prefix, visible, q.device)  # (b|1, k|1, 1, n, S)
        out = torch.zeros(b, kh, k.shape[2], dtype=torch.float32, device=q.device)
        for c in range(0, n, _SCORE_CHUNK):
            seen = mask[..., c : c + _SCORE_CHUNK, :]
            w = (qg[:, :, :, c : c + _SCORE_CHUNK] @ kt) * self.scale  # (b, k, g, c, S)
            w = w.masked_fill(~seen, float("-inf")).softmax(dim=-1)
            # relative to uniform attention: a query that sees few keys (early in the segment, empty
            # store) would otherwise give each of them a large weight whatever it attends to
            out += (w * seen.sum(dim=-1, keepdim=True)).sum(dim=(2, 3))
        return out[:, :, prefix:] / g

    def _local_mask(
        self, n: int, pos: int, prefix: int, visible: Tensor | None, device: torch.device
    ) -> Tensor:
        """Which keys queries at local positions pos..pos+n-1 see, as a bool (b|1, k|1, 1, n, S) mask
        over S = prefix + pos + n keys: the ``prefix`` stored pairs (those ``visible`` (b, k, P)
        marks, or all) and the local keys causally."""
        local = self._causal_mask(pos + n, device)[pos : pos + n]  # (n, pos+n)
        store = torch.ones(n, prefix, dtype=torch.bool, device=device)
        mask = torch.cat([store, local], dim=-1)[None, None, None]  # (1, 1, 1, n, S)
        if visible is not None:
            mask = mask.repeat(*visible.shape[:2], 1, 1, 1)
            mask[..., :prefix] &= visible[:, :, None, None, :]
        return mask

    def _sdpa(
        self, q: Tensor, k: Tensor, v: Tensor, *, pos: int, prefix: int = 0, visible: Tensor | None = None
    ) -> Tensor:
        """Causal softmax attention of q (b, h, n, d) at local positions pos.. over k, v (b, k,
        prefix+pos+n, d): the first ``prefix`` keys are stored pairs every query sees (those
        ``visible`` (b, k, prefix) marks, or all)."""
        b, _, n, _ = q.shape
        mask, causal = None, pos == 0 and n > 1
        if prefix:  # stored pairs: every query sees them, then causal over the local keys
            causal = False
            if n > 1 or visible is not None:
                mask = self._local_mask(n, pos, prefix, visible, q.device)
                if visible is None:  # one (n, S) mask for every head
                    mask = mask[0, 0]
                else:  # per kv head: each of its g query heads gets its mask
                    mask = mask.expand(b, self.n_kv, self.groups, n, k.shape[2]).reshape(b, -1, n, k.shape[2])
        elif pos > 0 and n > 1:  # a chunk after cached tokens: causal within, full over the past
            mask = self._causal_mask(pos + n, q.device)[pos : pos + n]
        dropout = self.attn_dropout if self.training else 0.0
        if mask is None and not causal and q.dtype != torch.float32:
            # every query sees every key (a decoded token): fold each kv head's g query heads into the
            # query axis, one plain SDPA per kv head. The same sums; on a CPU in bfloat16, SDPA's GQA
            # path took 634 us for one query over 1,464 keys against 136 folded (docs/speed.md); in
            # float32 the GQA path is the faster one, so it stays
            h, d = q.shape[1], q.shape[3]
            folded = q.reshape(b, self.n_kv, self.groups * n, d)
            out = F.scaled_dot_product_attention(folded, k, v, dropout_p=dropout, scale=self.scale)
            return out.view(b, h, n, d)
        cpu_bf16 = q.dtype == torch.bfloat16 and q.device.type == "cpu"
        if causal and cpu_bf16 and not dropout and not torch.is_grad_enabled():
            return self._blocked_causal(q, k, v)
        if _SDPA_GQA:
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=causal,
                dropout_p=dropout,
                scale=self.scale,
                enable_gqa=True,
            )
        k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout, scale=self.scale
        )

    def _blocked_causal(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention of q (b, h, n, d) over k, v (b, k, n, d) at local positions 0.., in blocks
        of queries: bfloat16 products, the softmax in float32 and its weights rounded to q's dtype
        (as HF's eager attention computes it). For streaming in bfloat16 on a CPU, where SDPA's
        causal kernel runs no faster than in float32: 33-37 ms a layer for a 2,048-token segment
        here, the blocks 22-23 ms (docs/speed.md). Each block sees only the keys up to its last query."""
        b, h, n, d = q.shape
        kh, g = self.n_kv, self.groups
        qg = q.reshape(b, kh, g, n, d)
        out = torch.empty_like(qg)
        future = self._causal_mask(n, q.device, future=True)
        for s in range(0, n, _ATTN_BLOCK):
            e = min(s + _ATTN_BLOCK, n)
            w = qg[:, :, :, s:e].reshape(b, kh, g * (e - s), d) @ k[:, :, :e].transpose(-1, -2)
            w = w.view(b, kh, g, e - s, e).float().mul_(self.scale)
            w = w.masked_fill_(future[s:e, :e], float("-inf")).softmax(dim=-1).to(q.dtype)
            out[:, :, :, s:e] = (w.view(b, kh, g * (e - s), e) @ v[:, :, :e]).view(b, kh, g, e - s, d)
        return out.view(b, h, n, d)

    # ---- constants built once per shape -----------------------------------------------------

    def _rope(self, pos: int, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin (n, d) for local positions pos..pos+n-1, from the HF model's rotary module."""
        size = max(self.cfg.segment_len + self.cfg.exact_tokens, pos + n)
        key = ("rope", size, like.device, like.dtype)
        if key not in self._consts:
            ids = torch.arange(size, device=like.device)[None]
            with torch.no_grad():
                cos, sin = self.hf.model.rotary_emb(like[:1, :1], ids)  # (1, size, d)
            self._consts = {k: t for k, t in self._consts.items() if k[0] != "rope"}
            self._consts[key] = torch.stack([cos[0], sin[0]])
        table = self._consts[key][:, pos : pos + n]
        return table[0], table[1]

    def _causal_mask(self, n: int, device: torch.device, *, future: bool = False) -> Tensor:
        """(n', n') lower-triangular bool mask with n' >= n (True: the key is seen), sliced to n
        columns; with ``future``, its negation (True: the key lies after the query)."""
        size = max(self.cfg.segment_len, n)
        key = ("future" if future else "mask", size, device)
        if key not in self._consts:
            seen = torch.ones(size, size, dtype=torch.bool, device=device).tril()
            self._consts[key] = ~seen if future else seen
        return self._consts[key][:n, :n]


def _llama_mlp(mlp: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None:
    """(gate_proj, up_proj, down_proj, act_fn) of a Llama-style MLP, down(act(gate(x)) * up(x));
    None for an MLP of another form (run as it is, never from the decode copies)."""
    gate, up, down, act = (getattr(mlp, p, None) for p in ("gate_proj", "up_proj", "down_proj", "act_fn"))
    if gate is None or up is None or down is None or act is None:
        return None
    return gate, up, down, act


def _norm(norm: nn.Module, x: Tensor, fused: bool) -> Tensor:
    """A layer's norm on x; with ``fused`` (a decoded token of a float32 model) HF's Llama-form
    RMSNorm (x / rms(x) * w, in float32) as torch's one ``rms_norm`` call: 14 against 29 us a call
    here, 61 calls a token (docs/speed.md). Other norms run as they are."""
    if fused and type(norm).__name__ in _RMS_NORMS and x.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in the HF Llama convention (rotate_half pairs dim i with i + d/2): x (b, h, n, d)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _check_supported(model: nn.Module, cfg: MemoryConfig) -> None:
    """Raise PatchError unless ``model`` has the Llama layer layout InfiniModel runs."""
    c = getattr(model, "config", None)
    kind = getattr(c, "model_type", type(model).__name__)
    if kind not in SUPPORTED:
        raise PatchError(
            f"model type {kind!r} cannot get Infini memories: use a Llama-family model "
            f"({', '.join(SUPPORTED)})"
        )
    base = getattr(model, "model", None)
    parts = [getattr(base, p, None) for p in ("embed_tokens", "layers", "norm", "rotary_emb")]
    if any(p is None for p in parts) or getattr(model, "lm_head", None) is None:
        raise PatchError(
            f"{kind} model lacks embed_tokens/layers/norm/rotary_emb/lm_head: upgrade transformers to >= 4.45"
        )
    for layer in base.layers:
        if not all(hasattr(layer, p) for p in _LAYER_PARTS) or not all(
            hasattr(layer.self_attn, p) for p in _ATTN_PARTS
        ):
            raise PatchError(f"{kind} layer lacks the q/k/v/o projections, norms or MLP InfiniModel needs")
    # segment_len >= 1 and the update rule are MemoryConfig's own checks; the window needs the model
    window = getattr(c, "sliding_window", None)
    windowed = kind == "mistral" or getattr(c, "use_sliding_window", False)
    if window and windowed and cfg.segment_len > window:
        raise ConfigError(
            f"segment length {cfg.segment_len} exceeds the model's sliding window "
            f"{window}: use --segment-len {window} or less"
        )
    # the stored pairs and the segment form one local window: it must stay in the trained context
    context = getattr(c, "max_position_embeddings", None)
    if cfg.exact_tokens and context and cfg.exact_tokens + cfg.segment_len > context:
        raise ConfigError(
            f"--exact-tokens {cfg.exact_tokens} + --segment-len {cfg.segment_len} exceeds the model's "
            f"context of {context} tokens: lower one so that they sum to {context} or less"
        )


def convert(model: nn.Module, cfg: MemoryConfig | None = None) -> InfiniModel:
    """Wrap a loaded HF Llama-family causal LM as an InfiniModel (the HF model stays unchanged).

    The gates are created on the model's device; raises PatchError for an unsupported architecture.
    """
    return InfiniModel(model, cfg or MemoryConfig())
