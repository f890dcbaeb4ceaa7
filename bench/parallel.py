"""Streaming several books at once (``infsum batch --parallel K``) against a plain batched forward.

    python bench/parallel.py --device cuda --rows 1 2 4 8          # the GPU targets of issue 14
    python bench/parallel.py --device cpu --rows 1 2 --tokens 8192 --threads 2

Random weights of SmolLM2-135M's shape (``--model DIR`` loads real ones; speed does not depend on
them) and random token ids. For each K: ``InfiniReader.read_many`` over K texts of ``--tokens``
tokens each, started together (rows that all finish at the same step: the batch's best case), and
over 2K texts of different lengths (rows refilled as texts finish, the batch's usual case); beside
them the anchor: the HF model's own base forward (no LM head, no memory) on K rows of one segment,
as many times as there are segments. Each measurement is the best of ``--repeats``, the modes
alternating. Prints one JSON object: per K, tokens/s of each mode and their ratios to the anchor at
the same K (``*_to_plain``) and at the largest K (``*_to_plain_max``). Issue 14's GPU targets:
``same_to_plain_max`` at least 0.5 for K = 1 and 0.8 for K = 8 (with 8 the largest K).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers

from infsum.config import MemoryConfig
from infsum.engine import InfiniReader, convert

# SmolLM2-135M-Instruct's shape (infsum's default model)
SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    dtype = getattr(torch, args.dtype)
    if args.model:
        hf = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    else:
        torch.manual_seed(0)
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).to(dtype)
    return hf.to(args.device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="local HF model directory (default: random weights)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--tokens", type=int, default=32768, help="tokens per text")
    p.add_argument("--segment-len", type=int, default=MemoryConfig().segment_len)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf = _model(args)
    reader = InfiniReader(convert(hf, MemoryConfig(segment_len=args.segment_len)))
    seg, n = args.segment_len, args.tokens // args.segment_len * args.segment_len
    g = torch.Generator().manual_seed(0)

    def texts(k: int, varied: bool) -> list[torch.Tensor]:
        # varied: 2k texts from a quarter to 1.75 times n tokens (n on average), plus a partial segment
        sizes = [n] * k if not varied else [seg * max(1, round(n / seg * (0.25 + 1.5 * i / (2 * k - 1)))) + 7
                                             for i in range(2 * k)]  # fmt: skip
        return [torch.randint(0, SHAPE["vocab_size"], (s,), generator=g) for s in sizes]

    def plain(k: int) -> None:
        ids = torch.randint(0, SHAPE["vocab_size"], (k, seg), generator=g).to(args.device)
        with torch.inference_mode():
            for _ in range(n // seg):
                hf.model(input_ids=ids)

    results = []
    plain(1)
    list(reader.read_many(texts(1, False), 1))  # warm up kernels and tables
    for k in args.rows:
        best: dict[str, float] = {}
        work: dict[str, int] = {}
        for _ in range(args.repeats):
            for mode in ("plain", "same", "varied"):
                if mode == "plain":
                    work[mode] = k * (n // seg) * seg
                    s = _timed(lambda k=k: plain(k), args.device)
                else:
                    batch = texts(k, mode == "varied")
                    work[mode] = sum(len(t) // seg * seg for t in batch)
                    s = _timed(lambda b=batch, k=k: list(reader.read_many(b, k)), args.device)
                best[mode] = min(best.get(mode, float("inf")), s)
        results.append({"rows": k, **{f"{m}_tok_s": round(work[m] / best[m], 1) for m in best}})
    top = results[-1]["plain_tok_s"]
    for r in results:
        for mode in ("same", "varied"):
            r[f"{mode}_to_plain"] = round(r[f"{mode}_tok_s"] / r["plain_tok_s"], 3)
            r[f"{mode}_to_plain_max"] = round(r[f"{mode}_tok_s"] / top, 3)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(json.dumps({
        "device": device, "dtype": args.dtype, "segment_len": seg, "tokens_per_text": n,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "weights": args.model or "random (SmolLM2-135M shape)", "rows": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
