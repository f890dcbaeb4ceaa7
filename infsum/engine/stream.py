"""Streaming tokens into memory, generating from it, saving and loading state.

Segments are run by ``InfiniModel.forward_segments``, the one segment loop (training's too); the
decoding loop here adds one token at a time to a local cache and commits it into memory when full.

A ``ReaderState`` is the memory of every complete segment read so far plus the token ids of the
current, incomplete segment. Those pending tokens are only run through the model when their segment
fills (or when generation starts), so reading a text in one call or in any number of pieces runs the
very same segments and gives bit-identical state and output. ``read`` streams one text (batch 1);
``read_many`` streams several side by side, one row of a batch each (``infsum batch --parallel``).
``generate`` never changes the state it is given, so one state answers any number of prompts.

A state file also records what the state is of (``identity``: the model's name, the adapter's file
name and sha256, the book's title and the sha256 of its text), in a fixed-size tensor so that the
file's size never depends on the book; ``check_identity`` refuses a state from another model,
adapter or book. It carries the book's ask context too (``ReaderState.context``: the central
passages and names that close each question's user turn, ``infsum.evidence.Evidence.context``), in
a tensor sized by the segment length alone (``context_bytes``), so a question asked of the state
gets the evidence it would get with the book.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from infsum.config import GenerationConfig
from infsum.engine.memory import ExactStore, MemoryState
from infsum.engine.model import InfiniModel
from infsum.errors import CheckpointError, ConfigError
from infsum.progress import Counter

if TYPE_CHECKING:
    from infsum.readers import Book

STATE_FORMAT = "infsum-state/2"  # 2 added the exact-token store (and, optionally, the identity)
_OLD_FORMATS = ("infsum-state/1",)  # still read: they hold no store (exact_tokens 0)
IDENTITY_BYTES = 8192  # the identity's JSON in UTF-8, zero-padded: the same file size for every book
_IDENTITY_CHARS = {"model": 1024, "adapter": 256, "title": 256, "author": 256, "source": 256}
# the ask context's JSON in UTF-8, zero-padded: per token of the largest evidence (half a segment,
# ``evidence.evidence_budget``) four times English's 4 bytes or more than CJK's 3 per character,
# and room for the names
CONTEXT_BYTES_PER_TOKEN = 16
CONTEXT_NAMES_BYTES = 4096
log = logging.getLogger("infsum")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_freed() -> bool:
    """Give the heap's freed memory back to the system (glibc's ``malloc_trim``) -> whether it could.

    ``InfiniReader`` calls it on a CPU after every segment it streams and after every answer. A
    segment's activations are freed tensors of a few MB each, which glibc keeps in its heap (its mmap
    threshold rises with the largest block freed, up to 32 MB); left there, the heap grew with the
    book's length until its free part was larger than what was in use: peak RSS of a default
    summary 1,699 MiB for a 10K-token book and 1,884 for a 100K-token one, 463 MiB in use in both.
    Trimmed after each segment: 1,631 and 1,618, streaming within a few percent of the untrimmed
    speed on long books (docs/speed.md). No-op where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return trim is not None


@dataclass(frozen=True)
class ReaderState:
    """What the reader knows after some tokens: complete segments in memory, the rest pending.

    ``pending`` is a 1-D int64 CPU tensor of fewer than ``segment_len`` ids; ``n_read`` counts every
    token read; ``segment_len``, ``update``, ``model_name``, ``variant`` and the ``exact_*`` store
    settings say how the memory was built; ``identity`` what it was read from (``identity()``),
    ``context`` the passages and names each ask closes with (``infsum.evidence.Evidence``).
    ``recent`` holds the ids of the last segment already written into memory: generation re-reads
    the end of it locally when the pending tail is short (see ``InfiniReader.generate``).
    """

    memory: MemoryState | None
    pending: Tensor
    n_read: int
    segment_len: int
    update: str
    model_name: str
    recent: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    variant: str = "paper"
    exact_tokens: int = 0
    exact_score: str = "residual"
    exact_positions: str = "fixed"
    exact_sinks: int = 0
    identity: dict[str, Any] = field(default_factory=dict)  # what it is of (see ``identity``); {}: unknown
    # the ask context (passages, names: ``evidence.Evidence.context``); {}: none saved
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def store_settings(self) -> str:
        """The store's settings in words; a reader must match them (score, placement and sinks only
        matter with a store)."""
        return _store_words(self.exact_tokens, self.exact_score, self.exact_positions, self.exact_sinks)


class InfiniReader:
    """Streams token ids through an InfiniModel segment by segment, then generates from the memory."""

    def __init__(self, model: InfiniModel) -> None:
        self.model = model
        self.cfg = model.cfg  # the reader reads with the model's own memory settings
        self.device = next(model.parameters()).device

    def _release(self) -> None:
        """On a CPU, give the heap's freed activations back to the system (``release_freed``), so
        that peak RSS does not follow the book's length."""
        if self.device.type == "cpu":
            release_freed()

    def empty(self) -> ReaderState:
        """The state before any token was read."""
        return ReaderState(
            None,
            torch.empty(0, dtype=torch.long),
            0,
            self.cfg.segment_len,
            self.cfg.update,
            self.model.name,
            variant=self.cfg.variant,
            exact_tokens=self.cfg.exact_tokens,
            exact_score=self.cfg.exact_score,
            exact_positions=self.cfg.exact_positions,
            exact_sinks=self.cfg.exact_sinks,
        )

    @torch.inference_mode()
    def read(
        self, ids: Iterable[int] | Tensor, state: ReaderState | None = None, progress: Counter | None = None
    ) -> ReaderState:
        """Read ``ids`` after ``state`` (None = from the start) -> the new state.

        Every complete segment is written into memory; the incomplete tail stays pending.
        ``progress(done, total)`` is called after each segment, in tokens of this call.
        """
        state = self._check(state or self.empty())
        ids = torch.as_tensor(ids if isinstance(ids, Tensor) else list(ids), dtype=torch.long).cpu()
        buf = torch.cat([state.pending, ids.flatten()])
        memory, n_full = self._run_full_segments(buf, state.memory, len(ids), len(state.pending), progress)
        recent = buf[n_full - self.cfg.segment_len : n_full].clone() if n_full else state.recent
        return replace(
            state, memory=memory, pending=buf[n_full:].clone(), recent=recent, n_read=state.n_read + len(ids)
        )

    @torch.inference_mode()
    def read_many(
        self, texts: Iterable[Iterable[int] | Tensor], rows: int, progress: Counter | None = None
    ) -> Iterator[tuple[int, ReaderState]]:
        """Read several texts side by side, ``rows`` of them in one batch -> ``(index, state)`` for
        each text (its index in ``texts``) as soon as it is read, in the order they finish.

        Each row of the batch holds one text and that text's own memory. A row whose text is done
        takes the next one, with an empty memory, so texts of different lengths share the batch
        without padding: every forward runs one full segment of each row. ``texts`` is consumed
        lazily, only as rows free up. Every state is what ``read`` gives for its text alone (the
        same segments, pending tail and recent segment), up to the float rounding of a batched
        product. With an exact-token store (``exact_tokens``; its stream index is one per batch)
        the texts are read one at a time. ``progress(done, total)`` counts tokens in full segments
        of the texts taken so far.
        """
        if rows < 1:
            raise ConfigError(f"--parallel {rows}: read at least 1 book at a time")
        seg = self.cfg.segment_len
        pending = iter(enumerate(texts))
        active: list[_Row] = []
        memory: MemoryState | None = None
        done = total = 0
        was_training = self.model.training
        self.model.eval()
        try:
            while True:
                while len(active) < (1 if self.cfg.exact_tokens else rows):
                    nxt = next(pending, None)
                    if nxt is None:
                        break
                    index, text = nxt
                    ids = torch.as_tensor(text if isinstance(text, Tensor) else list(text), dtype=torch.long)
                    ids = ids.flatten().cpu()
                    row = _Row(index, ids, len(ids) // seg * seg)
                    if row.n_full == 0:  # shorter than a segment: nothing to write
                        yield index, row.state(self.empty(), None)
                        continue
                    total += row.n_full
                    memory = _add_rows(memory, 1) if active else None
                    active.append(row)
                if not active:
                    return
                batch = torch.stack([r.ids[r.at : r.at + seg] for r in active]).to(self.device)
                _, memory = self.model.forward_segments(batch, memory, each=_nothing)
                self._release()
                for r in active:
                    r.at += seg
                done += seg * len(active)
                if progress is not None:
                    progress(done, total)
                finished = [k for k, r in enumerate(active) if r.at == r.n_full]
                for k in finished:
                    yield active[k].index, active[k].state(self.empty(), _take_rows(memory, [k]))
                if finished:
                    keep = [k for k in range(len(active)) if k not in finished]
                    active = [active[k] for k in keep]
                    memory = _take_rows(memory, keep) if keep else None
        finally:
            self.model.train(was_training)

    def _run_full_segments(
        self, buf: Tensor, memory: MemoryState | None, total: int, skip: int, progress: Counter | None
    ) -> tuple[MemoryState | None, int]:
        """Write every complete segment of buf into memory -> (memory, tokens consumed)."""
        seg = self.cfg.segment_len
        n_full = len(buf) // seg * seg

        def report(_h: Tensor, cols: slice) -> None:  # no logits: a read only writes memory
            self._release()
            if progress is not None:
                progress(min(cols.stop - skip, total), total)

        was_training = self.model.training
        self.model.eval()
        try:
            _, memory = self.model.forward_segments(buf[:n_full].to(self.device)[None], memory, each=report)
        finally:
            self.model.train(was_training)
        return memory, n_full

    @torch.inference_mode()
    def generate(
        self,
        state: ReaderState | None,
        prompt_ids: Iterable[int] | Tensor,
        gen: GenerationConfig | None = None,
        stop_ids: Iterable[int] = (),
        on_token: Callable[[int], None] | None = None,
        spared: Iterable[Sequence[int]] = (),
    ) -> list[int]:
        """Generate after the state's memory: pending tokens + prompt start the local segment.

        The local segment is sized so that the whole answer fits (only an answer longer than a
        segment rolls into memory while it is generated): when pending tokens + prompt leave no
        room, the oldest pending tokens go into memory first (as one shorter segment); when they
        leave room, it is filled with the end of the last segment already in memory, re-read
        locally but not written again (store pairs of those tokens are hidden meanwhile, so no token
        is seen twice). So the answer always sees the book's last
        ``segment_len - max_new_tokens`` tokens directly, whatever the book's length modulo the
        segment length (an untrained gate reads little from memory: without this, a book that
        ends just after a segment boundary would be summarized from the prompt alone).

        Returns the new token ids (stop id excluded). Greedy at temperature 0, else temperature and
        top-p sampling (seeded by ``gen.seed``). The repetition penalty and the no-repeat n-gram ban
        look at the generated tokens only (not the book or prompt) and spare the rest of a ``spared``
        sequence once its first token is written (the book's names, as token ids: a name can then be
        written again in full, spelled as the book spells it, where the rules would push the model to
        respell it; its first token is penalised as any other, so names are not repeated more for
        it). ``on_token`` sees each token.
        """
        gen = gen or GenerationConfig()
        state = self._check(state or self.empty())
        prompt = torch.as_tensor(
            prompt_ids if isinstance(prompt_ids, Tensor) else list(prompt_ids), dtype=torch.long
        ).cpu()
        local = torch.cat([state.pending, prompt.flatten()])
        if len(local) == 0:
            raise ConfigError("nothing to generate from: give a prompt (the chat template at least)")
        seg = self.cfg.segment_len
        # keep as much of the book's tail as leaves room for the whole answer in the local segment:
        # a segment that filled up mid-answer would move the book's last words and the instruction
        # into memory, which an untrained gate barely reads (the answer then loses its subject)
        room = seg - gen.max_new_tokens
        # an answer longer than a segment rolls into memory anyway: then keep the prompt local
        keep = min(len(local), room if room >= 1 else max(min(len(prompt), seg), 1))
        head = len(local) - keep
        hide_from = None
        if head == 0 and room >= 1 and len(local) < room:  # room left: re-read the last segment's end
            reread = state.recent[max(len(state.recent) - (room - len(local)), 0) :]
            local = torch.cat([reread, local])
            if state.memory is not None and state.memory.store:  # the stored copies step aside
                hide_from = state.memory.store[0].seen - len(reread)
        memory = state.memory
        was_training = self.model.training
        self.model.eval()
        try:
            # full segments, then one shorter one
            _, memory = self.model.forward_segments(local[:head].to(self.device)[None], memory, each=_nothing)
            return self._decode_loop(local[head:], memory, gen, set(stop_ids), on_token, hide_from, spared)
        finally:
            self.model.train(was_training)
            self._release()

    def _decode_loop(
        self,
        local: Tensor,
        memory: MemoryState | None,
        gen: GenerationConfig,
        stop: set[int],
        on_token: Callable[[int], None] | None,
        hide_from: int | None,
        spared: Iterable[Sequence[int]] = (),
    ) -> list[int]:
        """Prefill the local segment, then one token at a time, rolling into memory when it fills.
        Store pairs from stream index ``hide_from`` on are hidden (they are re-read locally); the
        ``spared`` sequences' continuations escape the repetition rules."""
        if self.model.prepare_decode():  # the copies built before the prefill, the heap given back
            self._release()
        cache = self.model.new_cache(1)
        cache.hide_from = hide_from
        logits = self.model.decode(local.to(self.device)[None], memory, cache)[0]
        sampler = _Sampler(gen, self.device, spared)
        step = torch.empty((1, 1), dtype=torch.long, device=self.device)  # refilled with each token
        out: list[int] = []
        for _ in range(gen.max_new_tokens):
            tok = sampler.choose(logits, out, banned=stop if len(out) < gen.min_new_tokens else ())
            if tok in stop:
                break
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if cache.pos == cache.size:  # the local segment is full: it becomes memory
                memory = self.model.commit(memory, cache)
            logits = self.model.decode(step.fill_(tok), memory, cache)[0]
        return out

    def _check(self, state: ReaderState) -> ReaderState:
        """Raise CheckpointError if ``state`` was built with another segment length, rule, variant,
        store or model."""
        if state.segment_len != self.cfg.segment_len or state.update != self.cfg.update:
            raise CheckpointError(
                f"state was read with segment length {state.segment_len} and the "
                f"{state.update} rule, this reader uses {self.cfg.segment_len} and "
                f"{self.cfg.update}: read the book again or match the settings"
            )
        if state.variant != self.cfg.variant:
            raise CheckpointError(
                f"state was read with the {state.variant} memory variant, this reader uses "
                f"{self.cfg.variant}: read the book again or match the settings"
            )
        c = self.cfg
        want_store = _store_words(c.exact_tokens, c.exact_score, c.exact_positions, c.exact_sinks)
        if state.store_settings != want_store:
            raise CheckpointError(
                f"state was read with {state.store_settings}, this reader uses {want_store}: "
                "read the book again or match the settings"
            )
        m = self.model
        want = (m.n_layers, m.n_kv, m.head_dim)
        if state.memory is not None:
            # the memory's M or, with the memory off, the store's keys: (b, kv heads, ..., head dim)
            t = state.memory.M[0] if state.memory.M else state.memory.store[0].k
            got = (state.memory.n_layers, t.shape[1], t.shape[-1])
            if got != want:
                raise CheckpointError(
                    f"state memory has (layers, kv heads, head dim) {got}, model "
                    f"{m.name} needs {want}: read the book again with this model"
                )
            if t.device != self.device:
                state = replace(state, memory=state.memory.to(self.device))
        return state


@dataclass
class _Row:
    """One text in ``read_many``'s batch: its ids, how far it is read, where its full segments end."""

    index: int
    ids: Tensor
    n_full: int  # tokens in the text's complete segments (what the batch writes into memory)
    at: int = 0

    def state(self, empty: ReaderState, memory: MemoryState | None) -> ReaderState:
        """The reader state after the whole text, as ``InfiniReader.read`` leaves it."""
        n, seg = self.n_full, empty.segment_len
        recent = self.ids[n - seg : n].clone() if n else empty.recent
        pending = self.ids[n:].clone()
        return replace(empty, memory=memory, pending=pending, recent=recent, n_read=len(self.ids))


def _add_rows(memory: MemoryState | None, n: int) -> MemoryState | None:
    """``memory`` with ``n`` empty rows (zeros) appended to its batch; None stays None (memory off).
    A zero memory reads as exactly 0 and the first write into it gives exactly the first segment's
    terms, as from no memory at all (``memory.read_memory``, ``update_memory``)."""
    if memory is None:
        return None
    assert not memory.store, "read_many reads one text at a time with a store"

    def grow(t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros(n, *t.shape[1:])])

    return MemoryState(tuple(map(grow, memory.M)), tuple(map(grow, memory.z)))


def _take_rows(memory: MemoryState | None, rows: Sequence[int]) -> MemoryState | None:
    """The memory of ``rows`` of the batch, as a batch of their own (copies, not views)."""
    if memory is None:
        return None
    if memory.store:  # one text at a time (see read_many): the whole batch is that text
        return memory
    index = torch.tensor(rows, device=memory.M[0].device)
    return MemoryState(
        tuple(m.index_select(0, index) for m in memory.M), tuple(z.index_select(0, index) for z in memory.z)
    )


def _store_words(n: int, score: str, positions: str, sinks: int) -> str:
    """'--exact-tokens 64 (score residual, positions fixed, 4 sinks)', or '--exact-tokens 0' (no store)."""
    return (
        f"--exact-tokens {n} (score {score}, positions {positions}, {sinks} sinks)"
        if n
        else "--exact-tokens 0"
    )


def _nothing(_h: Tensor, _cols: slice) -> None:
    """Keep nothing of a segment: it is only written into memory (the LM head never runs)."""


class _Sampler:
    """Picks the next token: repetition penalty, no-repeat n-grams, then greedy or top-p sampling.

    Per token it touches only the logits of the tokens generated so far (the penalty) and of the
    banned ones, never a vocabulary-sized mask: the work is O(tokens generated), not O(vocabulary).
    After the start of a ``spared`` sequence, its next token is neither penalised nor banned as an
    n-gram's end.
    """

    def __init__(
        self, gen: GenerationConfig, device: torch.device, spared: Iterable[Sequence[int]] = ()
    ) -> None:
        self.gen = gen
        # a spared sequence's proper prefixes -> the tokens that continue them
        self.continues: dict[tuple[int, ...], set[int]] = {}
        for seq in spared:
            for k in range(1, len(seq)):
                self.continues.setdefault(tuple(seq[:k]), set()).add(seq[k])
        self.longest = max(map(len, self.continues), default=0)
        self.seen: set[int] = set()  # generated so far
        # the same ids as a tensor, in first-seen order, for one indexed update of their logits
        self.seen_ids = torch.empty(gen.max_new_tokens, dtype=torch.long, device=device)
        self.ngrams: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens that followed it
        self.rng = None
        if gen.temperature > 0:
            self.rng = torch.Generator(device=device)
            self.rng.manual_seed(gen.seed if gen.seed is not None else torch.seed())

    def choose(self, logits: Tensor, out: list[int], banned: Collection[int] = ()) -> int:
        """Next token id after the generated ``out`` given the last position's logits (V,); never one
        of ``banned``. ``logits`` may be changed in place."""
        gen, n = self.gen, self.gen.no_repeat_ngram
        if out:
            if out[-1] not in self.seen:  # at most max_new_tokens ids: seen_ids holds them all
                self.seen_ids[len(self.seen)] = out[-1]
                self.seen.add(out[-1])
            if n > 0 and len(out) >= n:
                self.ngrams.setdefault(tuple(out[-n:-1]), set()).add(out[-1])
        logits = logits.float()  # a no-op for float32 logits
        free = self._continuations(out)
        kept = logits[list(free)].clone() if free else None
        if gen.repetition_penalty != 1.0 and self.seen:  # CTRL-style: shrink the logits of repeated tokens
            p, ids = gen.repetition_penalty, self.seen_ids[: len(self.seen)]
            old = logits[ids]
            logits[ids] = torch.where(old > 0, old / p, old * p)
        if kept is not None:
            logits[list(free)] = kept
        if n > 0 and len(out) >= n - 1:
            repeats = self.ngrams.get(tuple(out[len(out) - n + 1 :]), set()) - free
            if repeats:
                logits[list(repeats)] = float("-inf")
        if banned:
            logits[list(banned)] = float("-inf")
        if self.rng is None:
            return int(logits.argmax())
        probs = torch.softmax(logits / gen.temperature, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > gen.top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0.0
        return int(order[torch.multinomial(sorted_p, 1, generator=self.rng)])

    def _continuations(self, out: list[int]) -> set[int]:
        """The tokens that continue a spared sequence whose start ``out`` ends with."""
        free: set[int] = set()
        for k in range(1, min(self.longest, len(out)) + 1):
            free |= self.continues.get(tuple(out[-k:]), set())
        return free


def identity(model: str, adapter: Path | None, book: Book | None = None) -> dict[str, Any]:
    """What a state is of, saved with it and checked before it is used: ``model`` (the loaded
    model's name), the adapter file's name and sha256 (None: no adapter) and the book's title,
    author, words, source and the sha256 of its text (``Book.text`` in UTF-8)."""
    out: dict[str, Any] = {
        "model": model,
        "adapter": adapter.name if adapter else None,
        "adapter_sha256": _file_sha256(adapter) if adapter else None,
    }
    if book is not None:
        out.update(
            title=book.title,
            author=book.author,
            words=book.words,
            source=book.source,
            book_sha256=hashlib.sha256(book.text.encode("utf-8")).hexdigest(),
        )
    return out


def check_identity(
    state: ReaderState, path: str | Path, *, model: str, adapter: Path | None, book: Book | None = None
) -> None:
    """Raise CheckpointError when the state in ``path`` was read with another model or adapter
    than ``model`` and ``adapter`` (see ``identity``), or from another book than ``book`` (when
    given). A state saved without an identity (an older infsum) is only logged as unchecked; the
    memory settings are checked by the reader that uses it."""
    got = state.identity
    if not got:
        log.warning(
            "%s: the state records no model, adapter or book (an older infsum saved it): unchecked", path
        )
        return
    if got.get("model") != model:
        raise CheckpointError(
            f"state {path} was read with model {got.get('model')}, this run loads {model}: "
            f"give --model {got.get('model')}, or read the book again"
        )
    want = _file_sha256(adapter) if adapter else None
    if got.get("adapter_sha256") != want:
        theirs, ours = got.get("adapter") or "no adapter", adapter.name if adapter else "no adapter"
        fix = "--no-adapter" if got.get("adapter") is None else f"--adapter with the file {theirs} it used"
        raise CheckpointError(
            f"state {path} was read with {theirs}, this run uses {ours}: give {fix}, or read the book again"
        )
    if book is not None and got.get("book_sha256") not in (None, identity(model, None, book)["book_sha256"]):
        raise CheckpointError(
            f"state {path} holds another book ({got.get('title')!r}, {got.get('words')} words) than "
            f"{book.source}: give that book, or read this one again with --save-state"
        )


def _file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _identity_tensor(ident: dict[str, Any]) -> Tensor:
    """The identity as zero-padded UTF-8 JSON in ``IDENTITY_BYTES`` (long names are cut to
    ``_IDENTITY_CHARS``, so it always fits)."""
    cut = {
        k: v[: _IDENTITY_CHARS[k]] if isinstance(v, str) and k in _IDENTITY_CHARS else v
        for k, v in ident.items()
    }
    raw = json.dumps(cut, ensure_ascii=False).encode("utf-8")
    if len(raw) > IDENTITY_BYTES:  # only with pathological names: keep what is checked
        raw = json.dumps({k: cut[k] for k in ("model", "adapter_sha256", "book_sha256") if k in cut}).encode()
    return _bytes_tensor(raw, IDENTITY_BYTES)


def context_bytes(segment_len: int) -> int:
    """The bytes a state file holds for its ask context: enough for the passages of the largest
    evidence a segment of ``segment_len`` tokens allows (half of it) and the names."""
    return CONTEXT_BYTES_PER_TOKEN * (segment_len // 2) + CONTEXT_NAMES_BYTES


def save_state(
    state: ReaderState,
    path: str | Path,
    *,
    identity: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> None:
    """Save a reader state as safetensors (+ JSON metadata), with ``identity`` (default: the
    state's own; see ``identity()``) and the ask ``context`` (default: the state's own; see
    ``_context_tensor`` for a context too large for its slot).

    The file holds the memory (layers x kv heads x d_k x (d_v + 1) floats), the store in fixed
    ``exact_tokens`` slots per layer and kv head (keys, values, scores, stream indices), the
    pending and recent ids in fixed segment_len slots, the identity in ``IDENTITY_BYTES`` and the
    context in ``context_bytes(segment_len)``, so its size does not depend on the book's length or
    title (a state whose memory is still empty, a book shorter than one segment, is smaller).
    Pending tokens are re-run on use.
    """
    seg = state.segment_len
    pending = torch.zeros(seg, dtype=torch.long)
    pending[: len(state.pending)] = state.pending
    recent = torch.zeros(seg, dtype=torch.long)
    recent[: len(state.recent)] = state.recent
    stores = state.memory.store if state.memory is not None else ()
    held, seen = (stores[0].size, stores[0].seen) if stores else (0, 0)
    counts = torch.tensor([len(state.pending), state.n_read, len(state.recent), held, seen])
    tensors = {"pending": pending, "recent": recent, "counts": counts}
    ident = state.identity if identity is None else identity
    if ident:
        tensors["identity"] = _identity_tensor(ident)
    ctx = state.context if context is None else context
    if ctx:
        tensors["context"] = _context_tensor(ctx, context_bytes(seg), path)
    if state.memory is not None:
        for i, (M, z) in enumerate(zip(state.memory.M, state.memory.z, strict=True)):
            tensors[f"M.{i}"] = M.detach().cpu().contiguous()
            tensors[f"z.{i}"] = z.detach().cpu().contiguous()
    for i, st in enumerate(stores):
        for name, t in zip(("k", "v", "score", "pos"), (st.k, st.v, st.score, st.pos), strict=True):
            slots = torch.zeros(*t.shape[:2], state.exact_tokens, *t.shape[3:], dtype=t.dtype)
            slots[:, :, :held] = t.detach().cpu()
            tensors[f"store.{name}.{i}"] = slots
    meta = {
        "format": STATE_FORMAT,
        "segment_len": str(seg),
        "update": state.update,
        "model": state.model_name,
        "variant": state.variant,
        "exact_tokens": str(state.exact_tokens),
        "exact_score": state.exact_score,
        "exact_positions": state.exact_positions,
        "exact_sinks": str(state.exact_sinks),
    }
    save_file(tensors, str(path), metadata=meta)


def load_state(path: str | Path) -> ReaderState:
    """Load a state saved by ``save_state`` (never unpickles); CheckpointError if missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state file {path} not found: read the book first (or check the path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        if meta.get("format") not in (STATE_FORMAT, *_OLD_FORMATS):
            raise CheckpointError(f"{path} is not an infsum state file: read the book again")
        n_layers = sum(1 for k in tensors if k.startswith("M."))
        counts = [int(x) for x in tensors["counts"]]
        n_pending, n_read, n_recent = counts[:3]
        held, seen = counts[3:5] if len(counts) == 5 else (0, 0)  # format 1: no store
        stores = tuple(
            ExactStore(
                *(tensors[f"store.{name}.{i}"][:, :, :held].clone() for name in ("k", "v", "score", "pos")),
                seen,
            )
            for i in range(sum(1 for k in tensors if k.startswith("store.k.")))
        )
        memory = None
        if n_layers or stores:
            memory = MemoryState(
                tuple(tensors[f"M.{i}"] for i in range(n_layers)),
                tuple(tensors[f"z.{i}"] for i in range(n_layers)),
                stores,
            )
        return ReaderState(
            memory,
            tensors["pending"][:n_pending].clone(),
            n_read,
            int(meta["segment_len"]),
            meta["update"],
            meta.get("model", ""),
            tensors["recent"][:n_recent].clone(),
            meta.get("variant", "paper"),  # files saved before variants existed hold the paper's
            int(meta.get("exact_tokens", "0")),  # format 1 files hold no store
            meta.get("exact_score", "residual"),
            meta.get("exact_positions", "fixed"),
            int(meta.get("exact_sinks", "0")),
            _read_identity(tensors.get("identity")),
            _read_context(tensors.get("context")),
        )
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"state file {path} is damaged ({e}): read the book again") from e


def _read_identity(t: Tensor | None) -> dict[str, Any]:
    """The identity saved by ``_identity_tensor`` ({} when the file has none); ValueError if damaged."""
    return {} if t is None else _read_json(t)


def _read_json(t: Tensor) -> dict[str, Any]:
    """The JSON object in a zero-padded UTF-8 byte tensor; ValueError if damaged."""
    raw = bytes(t.tolist()).rstrip(b"\0")
    out = json.loads(raw.decode("utf-8"))
    if not isinstance(out, dict):
        raise ValueError("identity or context is not a JSON object")
    return out


def _read_context(t: Tensor | None) -> dict[str, Any]:
    """The ask context saved by ``_context_tensor`` ({} when the file has none, as files saved
    before it was kept); ValueError if damaged."""
    if t is None:
        return {}
    ctx = _read_json(t)
    for key in ("passages", "names"):
        if not isinstance(ctx.get(key), list) or not all(isinstance(x, str) for x in ctx[key]):
            raise ValueError(f"context {key} is not a list of strings")
    for key in ("evidence_tokens", "cast"):
        if not isinstance(ctx.get(key), int):
            raise ValueError(f"context {key} is not a whole number")
    return ctx


def _bytes_tensor(raw: bytes, size: int) -> Tensor:
    """``raw`` zero-padded to ``size`` bytes (it must fit)."""
    out = torch.zeros(size, dtype=torch.uint8)
    out[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return out


def _context_tensor(context: dict[str, Any], size: int, path: str | Path) -> Tensor:
    """The ask context as zero-padded UTF-8 JSON in ``size`` bytes. A context that does not fit
    (passages of unusually many bytes per token) loses whole passages from the end (the last in
    reading order), then names from the end, until it does; ``dropped_passages`` and
    ``dropped_names`` record how many, and a warning names the file."""
    ctx = dict(context)
    passages, names = list(ctx.get("passages", ())), list(ctx.get("names", ()))
    dropped = [0, 0]
    while True:
        ctx.update(passages=passages, names=names)
        if any(dropped):
            ctx.update(dropped_passages=dropped[0], dropped_names=dropped[1])
        raw = json.dumps(ctx, ensure_ascii=False).encode("utf-8")
        if len(raw) <= size or not (passages or names):
            break
        which = 0 if passages else 1
        (passages if which == 0 else names).pop()
        dropped[which] += 1
    assert len(raw) <= size, "without passages and names a context is a few numbers"
    if any(dropped):
        log.warning(
            "%s: the book's passages and names take more than the state's %d bytes for them: "
            "%d passages and %d names left out of it",
            path,
            size,
            *dropped,
        )
    return _bytes_tensor(raw, size)
