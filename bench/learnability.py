"""Cross-segment recall by memory variant and number of segments, on the CPU (JSON to stdout).

    python bench/learnability.py                                # every variant at 2, 4, 8, 16 segments
    python bench/learnability.py --variants paper,l2 --segments 2,4 --steps 300 --seed 1

For each (variant, segments) a fresh tiny Llama is trained from scratch by ``infsum.training.train``
on ``infsum.recall``'s task with samples of exactly that many segments (``recall_config``), then
scored with memory on, off and knocked out (M and z zeroed before the last segment) on the same
held-out samples. Chance is 1 / 16. A Markdown table of the same results goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

import torch

from infsum.engine.memory import VARIANTS
from infsum.recall import MODES, RecallTask, recall_config, train_recall


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """One row per (variant, segments): accuracy on / off / knockout, steps and training seconds."""
    lines = [
        "| variant | segments | on | off | knockout | steps | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accs = " | ".join(f"{r[m]:.3f}" for m in MODES)
        lines.append(f"| {r['variant']} | {r['segments']} | {accs} | {r['steps']} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, train and score every (variant, segments), print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated memory variants")
    p.add_argument("--segments", type=_ints, default=[2, 4, 8, 16], help="comma-separated segment counts")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=1, help="key -> value pairs in segment 1")
    p.add_argument("--eval-samples", type=int, default=1024)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: more gain ~15%% on an idle CPU and lose badly beside other jobs)",
    )
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="recompute each segment in the backward pass, as train() does by default (same numbers, slower)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    task = RecallTask(pairs=a.pairs)
    rows = []
    for variant in a.variants.split(","):
        for n in a.segments:
            cfg = replace(
                recall_config(n, variant=variant, steps=a.steps, seed=a.seed),
                grad_checkpointing=a.checkpointing,
            )
            _, result = train_recall(cfg, task, eval_samples=a.eval_samples)
            rows.append(
                {**result.to_dict(), "pairs": a.pairs, "seed": a.seed, "threads": torch.get_num_threads()}
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2))
    print(table_markdown(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
