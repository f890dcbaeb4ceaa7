"""One decoded token's weight products in float32 against int8 weights (PyTorch's dynamic quantization).

Times ``nn.Linear`` for one token, (1, 1, in), at the default model's shapes (SmolLM2-135M: q/o
576x576, k/v 576x192, gate/up 576x1536, down 1536x576, the LM head 576x49152) in float32 and after
``torch.ao.quantization.quantize_dynamic`` (int8 weights per output channel, activations quantized
per call; the ``x86`` engine, FBGEMM on AVX2/AVX-512), best of 5 runs of 200 calls each, and the
relative error of the int8 output. Prints one JSON object (microseconds per call). Random weights:
the speed depends on the shape only.

    python bench/int8_linear.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SHAPES = ((576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152))


def best_us(f, x: torch.Tensor, calls: int = 200, runs: int = 5) -> float:
    """The best mean time of one call of ``f(x)`` over ``runs`` runs of ``calls`` calls, in microseconds."""
    with torch.inference_mode():
        for _ in range(20):
            f(x)
        best = float("inf")
        for _ in range(runs):
            t = time.perf_counter()
            for _ in range(calls):
                f(x)
            best = min(best, (time.perf_counter() - t) / calls)
    return round(best * 1e6, 1)


def main() -> None:
    """Time every shape in both precisions; print the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    torch.manual_seed(0)
    out: dict = {"torch": torch.__version__, "threads": args.threads, "us_per_call": {}}
    for n_in, n_out in SHAPES:
        lin = torch.nn.Linear(n_in, n_out, bias=False).eval()
        quantize = torch.ao.quantization.quantize_dynamic
        q8 = quantize(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(1, 1, n_in)
        with torch.inference_mode():
            ref = lin(x)
            err = float((q8(x) - ref).norm() / ref.norm())
        out["us_per_call"][f"{n_in}x{n_out}"] = {
            "float32": best_us(lin, x),
            "int8": best_us(q8, x),
            "relative_error": round(err, 4),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
