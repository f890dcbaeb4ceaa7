"""Train the shipped adapter for the default model, then measure it: passkey and held-out perplexity.

Usage (the shipped adapter, on a 2-core CPU; see docs/adapter.md for the exact command and results):

    nice python bench/train_adapter.py --model /tmp/smollm2 --default-name \
        --out infsum/adapters/smollm2-135m-instruct.safetensors

On a GPU machine, ``bench/gpu/run.sh`` runs it with the recipe of issue 11 (``--device cuda``, data
from ``--data``, ``--init-adapter auto`` to continue the shipped adapter when its settings match).

Evaluation (written into the card's ``eval``): passkey accuracy with the adapter, with the untrained
conversion and with memory off, on identical prompts; perplexity on a held-out corpus book (excluded
from training) for the adapter and the untrained conversion at the same segment length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from infsum.config import MemoryConfig, TrainConfig
from infsum.engine.adapter import load_adapter
from infsum.engine.lora import add_lora_from_state
from infsum.engine.model import InfiniModel
from infsum.models import DEFAULT_MODEL, load_model
from infsum.passkey import read_prose, run_passkey
from infsum.tokenizer import Tokenizer
from infsum.training import TrainProgress, sequence_loss, train, write_adapter

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHIPPED = Path(__file__).resolve().parents[1] / "infsum" / "adapters" / "smollm2-135m-instruct.safetensors"
HELD_OUT = "the-prisoner-of-zenda.txt.gz"  # never trained on: the perplexity check reads it


def perplexity(model: InfiniModel, ids: list[int], segment_len: int) -> float:
    """exp(mean next-token loss) of ``ids`` read in segments of ``segment_len`` through the memory."""
    m = model.with_config(replace(model.cfg, segment_len=segment_len))
    x = torch.tensor([ids])
    with torch.inference_mode():
        total, count = sequence_loss(m, x, x.clone(), checkpointing=False)
    return math.exp(float(total) / int(count))


def make_evaluate(args: argparse.Namespace, base_dir: str):
    """The evaluation run after training: passkey (adapter, untrained, memory off) and perplexity."""

    def evaluate(model: InfiniModel, tok: Tokenizer) -> dict:
        t0 = time.time()
        base = load_model(base_dir, device=args.device).model
        untrained = InfiniModel(base, MemoryConfig(segment_len=args.eval_segment))  # default gate init
        kw = dict(
            tokenizer=tok,
            lengths=tuple(args.eval_lengths),
            depths=(0.0, 0.25, 0.5, 0.75, 1.0),
            trials=args.eval_trials,
            segment_len=args.eval_segment,
            seed=1234,
        )
        out: dict = {"passkey": {}, "perplexity": {}}
        runs = (("adapter", model, True), ("untrained", untrained, True), ("memory_off", model, False))
        for name, m, mem in runs:
            trials = args.eval_trials if name == "adapter" else args.control_trials or args.eval_trials
            rep = run_passkey(m, memory=mem, **{**kw, "trials": trials})
            out["passkey"][name] = {
                "table": rep.to_dict()["table"],
                "mean": rep.mean(),
                "mean_earlier_segments": rep.mean(earlier_only=True),
                "answers": [[r.key, r.answer] for r in rep.results],
            }
            print(f"passkey {name}: {rep.rows()}", flush=True)
        held = tok.encode(" ".join(read_prose(args.data / "corpus" / HELD_OUT).split()))
        ids = held[20000 : 20000 + args.ppl_tokens]  # a slice from the book's middle
        for seg in sorted({args.segment_len, args.eval_segment}):
            row = {"adapter": perplexity(model, ids, seg), "untrained": perplexity(untrained, ids, seg)}
            row["ratio"] = row["adapter"] / row["untrained"]
            out["perplexity"][str(seg)] = row
            print(f"perplexity at segment {seg}: {row}", flush=True)
        out["perplexity_text"] = f"{HELD_OUT}, tokens 20000..{20000 + args.ppl_tokens}"
        out["passkey_settings"] = {
            "lengths": args.eval_lengths,
            "segment_len": args.eval_segment,
            "trials_per_cell": args.eval_trials,
            "control_trials_per_cell": args.control_trials or args.eval_trials,
            "filler": "builtin",
            "seed": 1234,
        }
        out["eval_seconds"] = round(time.time() - t0, 1)
        return out

    return evaluate


def reevaluate(args: argparse.Namespace) -> None:
    """Measure the adapter ``args.out`` again and write the new results into its card."""
    loaded = load_model(args.model, device=args.device, dtype=torch.float32)
    tensors = load_file(str(args.out))
    card = json.loads(args.out.with_suffix(".json").read_text())
    model = InfiniModel(loaded.model, MemoryConfig(segment_len=args.eval_segment))
    add_lora_from_state(model, tensors, alpha=(card.get("lora") or {}).get("alpha"))
    load_adapter(model, args.out)
    card["eval"] = make_evaluate(args, str(loaded.path))(model.eval(), loaded.tokenizer)
    write_adapter(model, args.out, card)
    print(json.dumps(card["eval"]["perplexity"], indent=1))


def init_adapter(args: argparse.Namespace, cfg: TrainConfig) -> Path | None:
    """The adapter to continue from: ``--init-adapter PATH``, none, or (auto) the shipped adapter when
    it was trained with this run's LoRA rank and targets, memory variant and update rule (every GPU
    session then adds to the last one; a change of recipe starts afresh, and says so)."""
    if args.init_adapter == "none":
        return None
    if args.init_adapter != "auto":
        return Path(args.init_adapter)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    lora, memory = card.get("lora") or {}, card.get("memory") or {}
    theirs = (
        lora.get("rank"),
        sorted(lora.get("targets", [])),
        memory.get("variant", "paper"),
        memory.get("update"),
    )
    ours = (cfg.lora_rank, sorted(cfg.lora_targets), cfg.variant, cfg.update)
    if theirs != ours or card.get("full_finetune"):
        print(
            f"init-adapter auto: shipped adapter has {theirs}, this run {ours}: starting afresh", flush=True
        )
        return None
    print(f"init-adapter auto: continuing {SHIPPED}", flush=True)
    return SHIPPED


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model directory (default: infsum's default model)")
    p.add_argument("--default-name", action="store_true", help="--model is a copy of the default model")
    p.add_argument("--out", type=Path, default=Path("infsum/adapters/smollm2-135m-instruct.safetensors"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--segment-len", type=int, default=256)
    p.add_argument("--segments", default="2-3")
    p.add_argument("--curriculum", default="", help="stages of segments per sample: 2-2,2-3,3-4")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", type=Path, default=SHARED, help="corpus/, squality/train.jsonl, pairs/")
    p.add_argument("--variant", default="paper", help="memory variant (infsum.engine.memory.VARIANTS)")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA targets")
    p.add_argument("--passkey-anywhere", action="store_true", help="keys in the last segment too")
    p.add_argument(
        "--init-adapter",
        default="none",
        help="continue from this adapter; auto: the shipped one when its settings match this run's",
    )
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--gate-lr", type=float, default=5e-2)
    p.add_argument("--gate-init", type=float, default=-2.0)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--mix", default="0.3,0.5,0.2", help="lm,passkey,summary shares")
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/infsum-train-ckpt"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval-lengths", type=int, nargs="+", default=[4096])
    p.add_argument("--eval-segment", type=int, default=2048)
    p.add_argument("--eval-trials", type=int, default=2)
    p.add_argument("--control-trials", type=int, default=0, help="for untrained and memory off (0: same)")
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--eval-only", action="store_true", help="re-measure an existing --out adapter")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.eval_only:
        reevaluate(args)
        return
    lo, hi = (int(x) for x in args.segments.split("-"))
    curriculum = tuple(tuple(int(x) for x in s.split("-")) for s in args.curriculum.split(",") if s)
    summaries = [args.data / "squality" / "train.jsonl", args.data / "pairs" / "books.jsonl.gz"]
    cfg = TrainConfig(
        out=args.out,
        model=args.model,
        device=args.device,
        curriculum=curriculum,  # type: ignore[arg-type]
        variant=args.variant,
        lora_targets=tuple(args.targets.split(",")),
        passkey_anywhere=args.passkey_anywhere,
        steps=args.steps,
        batch_size=args.batch_size,
        segment_len=args.segment_len,
        segments=(lo, hi),
        lr=args.lr,
        gate_lr=args.gate_lr,
        gate_init=args.gate_init,
        lora_rank=args.rank,
        mix=tuple(float(x) for x in args.mix.split(",")),
        corpus=(args.data / "corpus",),
        exclude=(HELD_OUT,),
        summaries=tuple(p for p in summaries if p.is_file()),
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=10,
        resume=args.resume,
        max_seconds=args.max_minutes * 60,
        warmup=5,
    )
    cfg = replace(cfg, init_adapter=init_adapter(args, cfg))
    loaded = load_model(args.model, device=args.device, dtype=torch.float32)
    if args.default_name:  # a local copy of the default model: name it as such in the card
        loaded = replace(loaded, name=DEFAULT_MODEL, is_default=True)

    def show(s: TrainProgress) -> None:
        print(
            f"step {s.step}/{s.steps} loss {s.loss:.3f} {s.tokens_per_s:.0f} tok/s "
            f"eta {s.eta_s / 60:.1f} min gate_max {s.gate_max:.3f}",
            flush=True,
        )

    result = train(cfg, progress=show, loaded=loaded, evaluate=make_evaluate(args, str(loaded.path)))
    print(json.dumps({k: v for k, v in result.card.items() if k != "settings"}, indent=1)[:4000])
    sys.exit(0)


if __name__ == "__main__":
    main()
