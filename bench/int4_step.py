"""A decode step's MLP and LM-head products: float16 copies (what infsum decodes with on a float32
CPU) against torch's 4-bit CPU kernel (``_weight_int4pack_mm_for_cpu``, groups of 32).

The default model ships as a Q4_1 GGUF: every linear weight is ``d * q + m`` with q in 0..15 and one
(d, m) pair per 32 inputs, which is exactly the kernel's ``(q - 8) * scale + zero`` with scale = d
and zero = m + 8 d. So 4-bit copies would read a quarter of float32's bytes without rounding any
weight (only the scales, and the activations, in the kernel's bfloat16). This measures whether that
pays: random weights on that grid, 30 layers' distinct gate/up (fused, 576 x 3,072) and down
(1,536 x 576) products for one row, as a real step reads them (distinct weights, so not from the
cache), and the 576 x 49,152 LM head (Q8_0 in the GGUF, so 4 bits would round it: timed for the
bound only); best of ``--rounds`` rounds of 20 steps. Prints one JSON
object: milliseconds per step and each path's error relative to float32 on the same weights.

    python bench/int4_step.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

GROUP = 32
LAYERS, HIDDEN, INTER, VOCAB = 30, 576, 1536, 49152


def on_grid(n_out: int, n_in: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q int32 (n_out, n_in) in 0..15, d, m (n_out, n_in / 32) float16-representable) of a Q4_1-style
    weight, ``w = d * q + m`` per group of 32 inputs."""
    q = torch.randint(0, 16, (n_out, n_in), generator=g, dtype=torch.int32)
    d = (torch.rand(n_out, n_in // GROUP, generator=g) * 0.01 + 0.001).half().float()
    m = (-torch.rand(n_out, n_in // GROUP, generator=g) * 0.08).half().float()
    return q, d, m


def dequantized(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The float32 weight the grid describes, as a GGUF loader produces it."""
    n_out, n_in = q.shape
    return (q.view(n_out, -1, GROUP).float() * d[..., None] + m[..., None]).view(n_out, n_in)


def packed(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's packed weight and (n_in / 32, n_out, 2) bfloat16 scales and zeros."""
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8)
    scales_zeros = torch.stack([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return weight, scales_zeros


def int4_mm(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (rows, n_in) times a packed weight -> (rows, n_out) float32 (the kernel takes bfloat16 rows)."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), w[0], GROUP, w[1]).float()


def half_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x times a float16 copy -> float32, as ``DecodeCopies.linear`` computes it."""
    return F.linear(x.half(), w).float()


def best_ms(step: Callable[[], object], rounds: int, steps: int = 20) -> float:
    """The best mean milliseconds of ``step()`` over ``rounds`` rounds of ``steps`` calls."""
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    return round(best * 1e3, 2)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref||, rounded for the report."""
    return float(f"{float((y - ref).norm() / ref.norm()):.2e}")


def main() -> None:
    """Build the weights, time both paths, print the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    grids = [(on_grid(2 * INTER, HIDDEN, g), on_grid(HIDDEN, INTER, g)) for _ in range(LAYERS)]
    head = on_grid(VOCAB, HIDDEN, g)
    half = [(dequantized(*gu).half(), dequantized(*dn).half()) for gu, dn in grids]
    four = [(packed(*gu), packed(*dn)) for gu, dn in grids]
    head_half, head_four = dequantized(*head).half(), packed(*head)
    x = torch.randn(1, HIDDEN, generator=g)

    def mlp(mm: Callable, weights: list) -> None:
        for gate_up, down in weights:  # the same input row every layer: random weights, timing only
            gate, up = mm(x, gate_up).split(INTER, dim=-1)
            mm(F.silu(gate) * up, down)

    with torch.inference_mode():
        gate_up32, down32 = dequantized(*grids[0][0]), dequantized(*grids[0][1])
        h = torch.randn(1, INTER, generator=g)
        errors = {
            "float16": {
                "gate_up": relative_error(half_mm(x, half[0][0]), x @ gate_up32.T),
                "down": relative_error(half_mm(h, half[0][1]), h @ down32.T),
            },
            "int4": {
                "gate_up": relative_error(int4_mm(x, four[0][0]), x @ gate_up32.T),
                "down": relative_error(int4_mm(h, four[0][1]), h @ down32.T),
            },
        }
        ms = {
            "float16": {
                "mlp_30_layers": best_ms(lambda: mlp(half_mm, half), args.rounds),
                "lm_head": best_ms(lambda: half_mm(x, head_half), args.rounds),
            },
            "int4": {
                "mlp_30_layers": best_ms(lambda: mlp(int4_mm, four), args.rounds),
                "lm_head": best_ms(lambda: int4_mm(x, head_four), args.rounds),
            },
        }
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "ms_per_step": ms,
                      "relative_error": errors}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
