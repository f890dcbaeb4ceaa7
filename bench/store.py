"""The exact-token store: passkey accuracy, streaming speed, state size (JSON).

    python bench/store.py                                   # the default grid (see --help)
    python bench/store.py --lengths 4096 --trials 1 --depths 0 --exact-tokens 256 --scores residual

The model is ``infsum.models.load_model()`` (SmolLM2-135M-Instruct unless ``--model``), converted
with ``engine.ready(loaded, MemoryConfig(segment_len, exact_tokens=N, ...), None)``: fresh gates
(sigmoid(-6)), no adapter, so only the local attention (segment + store) can answer; ``--adapter
default`` (the shipped one, as ``infsum BOOK`` runs) or a file loads one instead. Every passkey
cell is ``infsum.passkey.run_passkey`` (same prompts for every N, score and placement, by seed).
Cells run length by length (every configuration at the first length, then the next), and each
finished cell is appended to ``--jsonl`` at once, so a run cut short keeps what it measured.
Streaming speed: ``InfiniReader.read`` of ``--speed-tokens`` random ids (best of two passes) for
each N and score; state size: ``save_state`` after ``--speed-tokens`` and after half of them.
``--held`` replaces the passkey accuracy with where the key is after reading each depth's first
sample: how many layer and kv-head stores hold each token of the key sentence (``held``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from infsum.config import EXACT_POSITIONS, EXACT_SCORES, MemoryConfig
from infsum.engine import InfiniReader, ready, save_state
from infsum.models import LoadedModel, load_model
from infsum.passkey import KEY_SENTENCE, FillerSource, check_answer, make_sample, run_passkey, sample_rng


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def configs(args: argparse.Namespace) -> list[MemoryConfig]:
    """Every store configuration measured: N = 0 once, then each N > 0 with each score and placement."""
    out = [MemoryConfig(segment_len=args.segment_len)] if 0 in args.exact_tokens else []
    for positions in args.positions:
        for sinks in args.sinks:
            for score in args.scores:
                out += [
                    MemoryConfig(
                        segment_len=args.segment_len,
                        exact_tokens=n,
                        exact_score=score,
                        exact_positions=positions,
                        exact_sinks=sinks,
                    )
                    for n in args.exact_tokens
                    if n > 0
                ]
    return out


def _adapter(args: argparse.Namespace) -> str | None:
    """The ``AdapterChoice`` of ``--adapter``: None for "none"."""
    return None if args.adapter == "none" else args.adapter


def passkey_cell(loaded: LoadedModel, mem: MemoryConfig, length: int, args: argparse.Namespace) -> dict:
    """Accuracy by depth at one length for one store configuration."""
    infini, _ = ready(loaded, mem, _adapter(args))
    t = time.perf_counter()
    report = run_passkey(
        infini,
        tokenizer=loaded.tokenizer,
        lengths=(length,),
        depths=args.depths,
        trials=args.trials,
        segment_len=mem.segment_len,
        seed=args.seed,
    )
    return {
        "exact_tokens": mem.exact_tokens,
        "score": mem.exact_score if mem.exact_tokens else None,
        "positions": mem.exact_positions if mem.exact_tokens else None,
        "sinks": mem.exact_sinks,
        "length": length,
        "trials": args.trials,
        "by_depth": {str(d): acc for d, acc in zip(report.depths, report.rows()[0][1], strict=True)},
        "mean": report.mean(),
        "mean_earlier_segments": report.mean(earlier_only=True),
        "answers": [r.answer for r in report.results],
        "seconds": round(time.perf_counter() - t, 1),
    }


def full_attention_cell(loaded: LoadedModel, length: int, args: argparse.Namespace) -> dict:
    """The ceiling: the plain HF model, greedy over each whole sample (full causal attention), on the
    very prompts ``run_passkey`` builds (same seed rule and filler). Only for lengths inside the
    model's context."""
    tok, hf = loaded.tokenizer, loaded.model
    source = FillerSource.builtin(tok)
    t = time.perf_counter()
    by_depth, answers = {}, []
    for depth in args.depths:
        right = 0
        for trial in range(args.trials):
            rng = sample_rng(args.seed, length, depth, trial)  # run_passkey's samples
            sample = make_sample(tok, length=length, depth=depth, rng=rng, filler=source)
            ids = torch.tensor([sample.ids], device=loaded.device)
            with torch.inference_mode():
                new = hf.generate(ids, max_new_tokens=len(sample.answer_ids) + 2, do_sample=False)
            answer = tok.decode(new[0, ids.shape[1] :].tolist())
            answers.append(answer)
            right += check_answer(answer, sample.key)
        by_depth[str(float(depth))] = right / args.trials
    return {
        "exact_tokens": None,
        "score": "full attention (plain HF)",
        "positions": None,
        "length": length,
        "trials": args.trials,
        "by_depth": by_depth,
        "mean": sum(by_depth.values()) / len(by_depth),
        "answers": answers,
        "seconds": round(time.perf_counter() - t, 1),
    }


def held_cell(
    loaded: LoadedModel, mem: MemoryConfig, length: int, depth: float, args: argparse.Namespace
) -> dict:
    """Where the key is after reading the first trial's sample at ``depth`` (the question included):
    per token of the key sentence, how many of the (layer, kv head) stores hold it, and the mean
    number of stored tokens from each segment. Tells a key that was dropped from one that is held
    but not retrieved."""
    tok = loaded.tokenizer
    rng = sample_rng(args.seed, length, depth, 0)  # run_passkey's sample, trial 0
    sample = make_sample(tok, length=length, depth=depth, rng=rng, filler=FillerSource.builtin(tok))
    key_ids = tok.encode(KEY_SENTENCE.format(key=sample.key))
    state = InfiniReader(ready(loaded, mem, _adapter(args)).model).read(torch.tensor(sample.ids))
    stores = [st.pos[0, h] for st in state.memory.store for h in range(st.pos.shape[1])]  # stream indices
    segment = [p // mem.segment_len for p in stores]
    n_seg = -(-len(sample.ids) // mem.segment_len)
    per_segment = [sum(int((s == i).sum()) for s in segment) / len(stores) for i in range(n_seg)]
    return {
        "exact_tokens": mem.exact_tokens,
        "score": mem.exact_score,
        "positions": mem.exact_positions,
        "length": length,
        "depth": depth,
        "key_segment": sample.key_pos // mem.segment_len,
        "stores": len(stores),
        "held_by_token": [
            [tok.decode([t]), sum(int((p == sample.key_pos + j).any()) for p in stores)]
            for j, t in enumerate(key_ids)
        ],
        "stores_holding_any": sum(
            int(((p >= sample.key_pos) & (p < sample.key_pos + len(key_ids))).any()) for p in stores
        ),
        "mean_stored_per_segment": [round(x, 1) for x in per_segment],
    }


def speed_and_size(loaded: LoadedModel, mem: MemoryConfig, n: int, args: argparse.Namespace) -> dict:
    """Streaming tokens/s (best of two passes over n random ids) and the state file's size after n
    and n // 2 tokens."""
    reader = InfiniReader(ready(loaded, mem, _adapter(args)).model)
    ids = torch.randint(0, loaded.model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        reader.read(ids)
        best = min(best, time.perf_counter() - t)
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (n // 2, n):
            path = Path(tmp) / f"{m}.state"
            save_state(reader.read(ids[:m]), path)
            sizes.append(path.stat().st_size)
    return {
        "exact_tokens": mem.exact_tokens,
        "score": mem.exact_score if mem.exact_tokens else None,
        "tokens": n,
        "tok_s": round(n / best, 1),
        "state_bytes": {str(n // 2): sizes[0], str(n): sizes[1]},
    }


def main() -> None:
    """Parse the grid, run it, print one JSON object (and append each cell to ``--jsonl``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model name or directory [default: SmolLM2-135M-Instruct]")
    p.add_argument("--adapter", default="none", help="none (untrained gates), default (shipped) or a file")
    p.add_argument("--exact-tokens", type=_ints, default=[0, 64, 256, 1024])
    p.add_argument("--scores", type=_words, default=list(EXACT_SCORES))
    p.add_argument("--positions", type=_words, default=["fixed"], help=f"of {', '.join(EXACT_POSITIONS)}")
    p.add_argument("--sinks", type=_ints, default=[0], help="first stream tokens always kept (each value)")
    p.add_argument("--lengths", type=_ints, default=[4096, 8192])
    p.add_argument(
        "--depths", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.25, 0.5, 0.75, 1.0]
    )
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--segment-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed-tokens", type=int, default=8192, help="0 skips the speed and size measurement")
    p.add_argument("--full-attention", action="store_true", help="also the plain HF model (the ceiling)")
    p.add_argument("--jsonl", type=Path, default=None, help="append every finished cell here")
    p.add_argument(
        "--held", action="store_true", help="instead of passkey accuracy: which key tokens each store holds"
    )
    args = p.parse_args()

    t0 = time.perf_counter()
    loaded = load_model(args.model)
    out: dict = {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.model.dtype),
        "threads": torch.get_num_threads(),
        "segment_len": args.segment_len,
        "seed": args.seed,
        "adapter": args.adapter,
        "passkey": [],
        "held": [],
        "speed": [],
    }

    def record(kind: str, row: dict) -> None:
        out[kind].append(row)
        print(json.dumps({kind: row}), file=sys.stderr, flush=True)
        if args.jsonl is not None:
            with args.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps({kind: row}) + "\n")

    context = loaded.model.config.max_position_embeddings
    for length in args.lengths:
        if args.full_attention and length <= context:
            record("passkey", full_attention_cell(loaded, length, args))
        for mem in configs(args):
            if args.held and mem.exact_tokens:
                for depth in args.depths:
                    record("held", held_cell(loaded, mem, length, depth, args))
            elif not args.held:
                record("passkey", passkey_cell(loaded, mem, length, args))
    if args.speed_tokens:
        for n in sorted({0, *args.exact_tokens}):
            for score in args.scores if n else args.scores[:1]:
                mem = MemoryConfig(segment_len=args.segment_len, exact_tokens=n, exact_score=score)
                record("speed", speed_and_size(loaded, mem, args.speed_tokens, args))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
