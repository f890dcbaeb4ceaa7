"""Streaming and generation speed of the Infini engine against plain transformers (JSON to stdout).

    python bench/stream.py --model /tmp/smollm2            # 20K tokens: speed, overhead, peak RSS
    python bench/stream.py --model /tmp/smollm2 --big      # also peak RSS at 200K tokens (minutes)

Token ids are random (speed does not depend on them). Streaming baseline: the HF model's own base
forward (no LM head, like the reader) over the same segments with positions restarting at 0, i.e.
memory off. Generation baseline: ``model.generate`` (greedy, KV cache) from the same local context.
Peak RSS is each size's own child process's ru_maxrss.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from infsum.config import GenerationConfig, MemoryConfig
from infsum.engine import InfiniReader, convert


def _load(path: str, dtype: str) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def _ids(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def bench_streaming(hf, reader: InfiniReader, ids: torch.Tensor, repeats: int) -> dict:
    """tokens/s of reader.read against the HF base forward on the same segments.

    The two alternate segment by segment (and the best of ``repeats`` passes counts for each), so
    load from other processes on a shared machine disturbs both sides alike.
    """
    seg = reader.cfg.segment_len
    n = len(ids) // seg * seg  # whole segments only: both sides do the same work
    with torch.inference_mode():
        hf.model(input_ids=ids[None, :seg])  # warm up kernels
    reader.read(ids[:seg])  # and the reader's constant tables
    t_plain, t_infini = float("inf"), float("inf")
    for _ in range(repeats):
        plain = infini = 0.0
        state = None
        for s in ids[:n].split(seg):
            with torch.inference_mode():
                t = time.perf_counter()
                hf.model(input_ids=s[None])  # positions 0..seg-1 in every segment, no memory
                plain += time.perf_counter() - t
            t = time.perf_counter()
            state = reader.read(s, state)
            infini += time.perf_counter() - t
        t_plain, t_infini = min(t_plain, plain), min(t_infini, infini)
    return {
        "tokens": n,
        "segment_len": seg,
        "plain_tok_s": round(n / t_plain, 1),
        "infini_tok_s": round(n / t_infini, 1),
        "overhead_pct": round(100 * (t_infini / t_plain - 1), 2),
    }


def bench_generation(hf, reader: InfiniReader, book: torch.Tensor, prompt_len: int, new: int) -> dict:
    """Decode tokens/s of reader.generate after a book against HF generate from the same local segment."""
    state = reader.read(book)
    prompt = _ids(prompt_len, hf.config.vocab_size, seed=1)
    local = torch.cat([state.pending, prompt])
    gen = GenerationConfig(max_new_tokens=new, temperature=0.0)
    reader.generate(state, prompt, GenerationConfig(max_new_tokens=4))  # warm up
    stamps = []
    t0 = time.perf_counter()
    out = reader.generate(state, prompt, gen, on_token=lambda _: stamps.append(time.perf_counter()))
    infini_s = time.perf_counter() - t0
    with torch.inference_mode():
        hf.generate(local[None], max_new_tokens=4, do_sample=False)  # warm up
        t1 = time.perf_counter()
        hf_out = hf.generate(
            local[None],
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            repetition_penalty=gen.repetition_penalty,
            no_repeat_ngram_size=gen.no_repeat_ngram,
        )
        hf_s = time.perf_counter() - t1
    hf_new = hf_out.shape[1] - len(local)
    decode_s = stamps[-1] - stamps[0]
    return {
        "local_tokens": len(local),
        "new_tokens": len(out),
        "infini_tok_s": round(len(out) / infini_s, 1),
        "infini_decode_tok_s": round((len(stamps) - 1) / decode_s, 1) if len(stamps) > 1 else None,
        "infini_first_token_s": round(stamps[0] - t0, 3) if stamps else None,
        "hf_generate_tok_s": round(hf_new / hf_s, 1),
    }


def peak_rss(args: argparse.Namespace, n: int) -> dict:
    """Peak RSS (MiB) of a fresh process that reads n tokens."""
    cmd = [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--segment-len",
        str(args.segment_len),
        "--rss-child",
        str(n),
    ]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tokens": n, "peak_rss_mib": child["peak_rss_mib"], "seconds": round(time.perf_counter() - t, 1)}


def _rss_child(args: argparse.Namespace) -> None:
    hf = _load(args.model, args.dtype)
    reader = InfiniReader(convert(hf, MemoryConfig(segment_len=args.segment_len)))
    state = None
    for start in range(0, args.rss_child, 100_000):  # ids made piece by piece, as a book is streamed
        state = reader.read(_ids(min(100_000, args.rss_child - start), hf.config.vocab_size, start), state)
    print(json.dumps({"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/tmp/smollm2", help="local model directory (HF format)")
    p.add_argument("--tokens", type=int, default=20_000, help="tokens streamed for the speed test")
    p.add_argument("--segment-len", type=int, default=MemoryConfig().segment_len)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="timed runs; the fastest counts")
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--big", action="store_true", help="also measure peak RSS at 200K tokens (minutes)")
    p.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        return _rss_child(args)
    hf = _load(args.model, args.dtype)
    reader = InfiniReader(convert(hf, MemoryConfig(segment_len=args.segment_len)))
    ids = _ids(args.tokens, hf.config.vocab_size)
    report = {
        "model": str(Path(args.model)),
        "device": "cpu",
        "threads": args.threads,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "streaming": bench_streaming(hf, reader, ids, args.repeats),
        "generation": bench_generation(
            hf, reader, ids[: args.segment_len + 300], args.prompt_tokens, args.gen_tokens
        ),
        "peak_rss": [peak_rss(args, n) for n in ((20_000, 200_000) if args.big else (20_000,))],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
