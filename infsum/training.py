"""Teaching a converted model to use its memory: the data mixture, the trainer, checkpoints, the adapter.

Trainable: the gates (one beta per query head per layer, their own learning rate and NO weight decay:
with the global rate and decay they stay stuck near their init, see docs/infini-attention.md), LoRA
on the attention projections, or every weight (``full_finetune``). A sample is 2..N segments;
the loss back-propagates through the memory across all of them, with each segment's activations
recomputed in the backward pass (gradient checkpointing per segment, as in the paper). Several
processes (``accelerate launch``) train data-parallel: each draws its own samples and the gradients
are averaged before every step. Checkpoints hold only safetensors and JSON, never pickles.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from infsum.config import MemoryConfig, TrainConfig
from infsum.engine.adapter import ADAPTER_FORMAT, load_adapter, save_adapter
from infsum.engine.lora import add_lora, lora_settings
from infsum.engine.memory import get_variant
from infsum.engine.model import InfiniModel
from infsum.errors import CheckpointError, ConfigError
from infsum.tokenizer import Tokenizer
from infsum.training_data import IGNORE, DataMixture, Example, corpus_files


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback sees after each step."""

    step: int
    steps: int
    loss: float
    tokens_per_s: float
    eta_s: float
    gate_max: float  # the largest sigmoid(beta): has any head started to use its memory?


@dataclass(frozen=True)
class TrainResult:
    """Where the adapter went and how training went."""

    adapter: Path
    steps: int
    tokens_seen: int
    seconds: float
    tokens_per_s: float
    losses: tuple[float, ...]
    card: dict[str, Any] = field(repr=False)


# ---- model, optimizer, loss --------------------------------------------------------------------


def _memory_config(cfg: TrainConfig) -> MemoryConfig:
    """The memory settings a run trains with (ConfigError for an unknown update rule)."""
    return MemoryConfig(
        segment_len=cfg.segment_len,
        update=cfg.update,  # type: ignore[arg-type] (checked by MemoryConfig)
        gate_init=cfg.gate_init,
        variant=cfg.variant,
        exact_tokens=cfg.exact_tokens,
    )


def build_model(hf_model: torch.nn.Module, cfg: TrainConfig) -> InfiniModel:
    """Convert ``hf_model`` with fresh gates at ``cfg.gate_init``, add LoRA, and mark what trains."""
    mem = _memory_config(cfg)
    for p in hf_model.parameters():
        p.requires_grad_(cfg.full_finetune)
    if cfg.lora_rank > 0 and not cfg.full_finetune:
        add_lora(hf_model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
    model = InfiniModel(hf_model, mem)
    model.gates.requires_grad_(True)
    return model


def param_groups(model: InfiniModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Two AdamW groups: the gates (``gate_lr``, weight decay 0) and everything else that trains."""
    body = [p for n, p in model.named_parameters() if p.requires_grad and n != "gates"]
    groups = [{"params": [model.gates], "lr": cfg.gate_lr, "weight_decay": 0.0, "name": "gates"}]
    if body:
        groups.append({"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "body"})
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def make_optimizer(model: InfiniModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``."""
    return torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.95))


def set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to 10% at the last step."""
    if step < cfg.warmup:
        f = (step + 1) / cfg.warmup
    else:
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        f = 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t)))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * f


def sequence_loss(
    model: InfiniModel, ids: Tensor, labels: Tensor, *, checkpointing: bool = True
) -> tuple[Tensor, Tensor]:
    """(summed loss, scored tokens) of (b, T) ``ids`` read segment by segment, back-propagating
    through the memory across segments; ``labels`` (b, T) holds IGNORE where a token is unscored."""
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]  # position t predicts token t + 1, across segment boundaries too

    def segment_loss(h: Tensor, cols: slice) -> Tensor:
        """Summed cross-entropy of one segment's final hidden states h (b, n, hidden)."""
        t = targets[:, cols]
        if not bool((t != IGNORE).any()):  # nothing scored here (filler): skip the LM head
            return ids.new_zeros((), dtype=torch.float32)
        logits = model.logits(h)  # (b, n, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), t.flatten(), ignore_index=IGNORE, reduction="sum"
        )

    losses, _ = model.forward_segments(ids, checkpoint=checkpointing, each=segment_loss)
    return sum(losses, ids.new_zeros((), dtype=torch.float32)), (targets != IGNORE).sum()


# ---- processes -----------------------------------------------------------------------------------


class _Processes:
    """This process's place in a data-parallel run (``accelerate launch``), or a single process."""

    def __init__(self, device: str) -> None:
        self.rank, self.world, self.device = 0, 1, None
        try:
            from accelerate import PartialState
        except ImportError:  # accelerate is optional: one process
            return
        state = PartialState(cpu=device == "cpu")
        self.rank, self.world = state.process_index, state.num_processes
        self.device = state.device if device == "auto" or self.world > 1 else None

    @property
    def main(self) -> bool:
        """True on the process that writes files."""
        return self.rank == 0

    def average_grads(self, params: list[Tensor]) -> None:
        """Mean of every process's gradients, as one flat all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def mean(self, x: float) -> float:
        """Mean of a float over processes."""
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world > 1:
            torch.distributed.barrier()


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    model: InfiniModel,
    opt: torch.optim.Optimizer,
    *,
    step: int,
    tokens_seen: int,
    losses: Sequence[float],
    cfg: TrainConfig,
) -> None:
    """Write trainable weights and AdamW moments (safetensors) and the step count (JSON) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    moments: dict[str, Tensor] = {}
    for n, p in named.items():
        for k, v in opt.state.get(p, {}).items():
            moments[f"{n}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    save_file({n: p.detach().cpu().contiguous() for n, p in named.items()}, str(path / "weights.tmp"))
    save_file(moments, str(path / "optimizer.tmp"))
    meta = {"step": step, "tokens_seen": tokens_seen, "losses": list(losses), "config": _jsonable(cfg)}
    (path / "trainer.tmp").write_text(json.dumps(meta))
    for name in ("weights", "optimizer"):  # rename last: a crash mid-write leaves the old checkpoint
        (path / f"{name}.tmp").replace(path / f"{name}.safetensors")
    (path / "trainer.tmp").replace(path / "trainer.json")


def load_checkpoint(
    path: Path, model: InfiniModel, opt: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[int, int, list[float]]:
    """Restore what ``save_checkpoint`` wrote -> (step, tokens seen, losses); never unpickles."""
    try:
        meta = json.loads((path / "trainer.json").read_text())
        weights = load_file(str(path / "weights.safetensors"))
        moments = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"training checkpoint {path} is missing or damaged ({e}): start without --resume"
        ) from e
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(named):
        raise CheckpointError(
            f"training checkpoint {path} holds other parameters than this run trains "
            "(LoRA rank, targets or full fine-tuning differ): use the same settings"
        )
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(weights[n].to(p.dtype))
    for n, p in named.items():
        state = {k.split("/", 1)[1]: v for k, v in moments.items() if k.split("/", 1)[0] == n}
        state = {k: v if k == "step" else v.to(p.device) for k, v in state.items()}  # AdamW keeps step on CPU
        if state:
            opt.state[p] = state
    return int(meta["step"]), int(meta["tokens_seen"]), [float(x) for x in meta["losses"]]


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return json.loads(json.dumps(d, default=str))


# ---- the loop ------------------------------------------------------------------------------------

Evaluate = Callable[[InfiniModel, Tokenizer], dict[str, Any]]


class Examples(Protocol):
    """What ``train`` draws samples from (``DataMixture`` or a synthetic task)."""

    def example(self, length: int, rng: random.Random) -> Example:
        """One example of exactly ``length`` tokens."""
        ...


@dataclass
class _Run:
    """The mutable bookkeeping of one training run (owned by ``train``)."""

    step: int = 0
    tokens_seen: int = 0  # over every run resumed from the same checkpoint
    tokens_run: int = 0  # in this run only, for tokens/s
    losses: list[float] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def train(
    cfg: TrainConfig,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    loaded: Any | None = None,
    evaluate: Evaluate | None = None,
    data: Examples | None = None,
) -> TrainResult:
    """Train the Infini parameters of ``cfg.model`` (or of an already ``loaded`` model: anything with
    ``.model``, ``.tokenizer`` and ``.name``) and write the adapter ``cfg.out`` (+ ``.json`` card).
    ``data`` (default: the ``DataMixture`` of ``cfg``) draws the examples. ``evaluate(model,
    tokenizer)``, if given, runs after training on the main process and its dict goes into the
    card's ``eval``."""
    from infsum.models import load_model

    _check(cfg)
    procs = _Processes(cfg.device)
    if loaded is None:  # several processes: each loads on the CPU, then moves to its own device
        loaded = load_model(cfg.model, device="cpu" if procs.device else cfg.device, dtype=torch.float32)
    if procs.device is not None:
        loaded.model.to(procs.device)
    torch.manual_seed(cfg.seed)  # LoRA's A init: the same on every process
    model = build_model(loaded.model, cfg).train()
    if cfg.init_adapter is not None:  # continue an earlier run: its gates and LoRA, fresh optimizer
        load_adapter(model, cfg.init_adapter)
    opt = make_optimizer(model, cfg)
    data = data if data is not None else DataMixture(loaded.tokenizer, cfg)
    run = _Run()
    if cfg.resume and cfg.checkpoint_dir and (cfg.checkpoint_dir / "trainer.json").is_file():
        run.step, run.tokens_seen, run.losses = load_checkpoint(cfg.checkpoint_dir, model, opt, cfg)
    start = run.step
    while run.step < cfg.steps:
        _train_step(model, opt, data, cfg, procs, run)
        timed_out = cfg.max_seconds is not None and procs.mean(run.elapsed) > cfg.max_seconds
        if progress is not None and procs.main:
            eta = run.elapsed / (run.step - start) * (cfg.steps - run.step)
            gate_max = float(torch.sigmoid(model.gates.detach()).max())
            progress(
                TrainProgress(
                    run.step, cfg.steps, run.losses[-1], run.tokens_run / run.elapsed, eta, gate_max
                )
            )
        due = run.step % cfg.checkpoint_every == 0 or run.step == cfg.steps or timed_out
        if cfg.checkpoint_dir and procs.main and due:
            save_checkpoint(
                cfg.checkpoint_dir,
                model,
                opt,
                step=run.step,
                tokens_seen=run.tokens_seen,
                losses=run.losses,
                cfg=cfg,
            )
        if timed_out:
            break
    seconds = run.elapsed
    model.eval()
    card: dict[str, Any] = {}
    if procs.main:
        evaluation = evaluate(model, loaded.tokenizer) if evaluate is not None else {}
        card = make_card(
            cfg,
            loaded,
            model,
            step=run.step,
            tokens_seen=run.tokens_seen,
            seconds=seconds,
            tokens_per_s=run.tokens_run / seconds,
            losses=run.losses,
            evaluation=evaluation,
            world=procs.world,
        )
        write_adapter(model, cfg.out, card)
    procs.barrier()
    return TrainResult(
        cfg.out, run.step, run.tokens_seen, seconds, run.tokens_run / seconds, tuple(run.losses), card
    )


def _train_step(
    model: InfiniModel,
    opt: torch.optim.Optimizer,
    data: Examples,
    cfg: TrainConfig,
    procs: _Processes,
    run: _Run,
) -> None:
    """Draw this step's batch, back-propagate through its segments, average gradients, update."""
    device = model.gates.device
    rng = random.Random(f"{cfg.seed}/{run.step}/{procs.rank}")  # resuming redraws the same samples
    length = rng.randint(*segments_now(cfg, run)) * cfg.segment_len
    batch = [data.example(length, rng) for _ in range(cfg.batch_size)]
    ids = torch.tensor([e.ids for e in batch], device=device)
    labels = torch.tensor([e.labels for e in batch], device=device)
    set_lr(opt, cfg, run.step)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss_sum, count = sequence_loss(model, ids, labels, checkpointing=cfg.grad_checkpointing)
    loss = loss_sum / count.clamp_min(1)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    procs.average_grads(trainable)
    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    run.step += 1
    run.tokens_run += ids.numel() * procs.world
    run.tokens_seen += ids.numel() * procs.world
    run.losses.append(procs.mean(float(loss.detach())))


def segments_now(cfg: TrainConfig, run: _Run) -> tuple[int, int]:
    """(min, max) segments per sample at this point of the run: the curriculum's stage for the share
    of the run done (of its steps, or of ``max_seconds`` if that is further), else ``cfg.segments``."""
    if not cfg.curriculum:
        return cfg.segments
    done = run.step / cfg.steps
    if cfg.max_seconds:
        done = max(done, run.elapsed / cfg.max_seconds)
    return cfg.curriculum[min(int(done * len(cfg.curriculum)), len(cfg.curriculum) - 1)]


def _check(cfg: TrainConfig) -> None:
    """Raise ConfigError for settings that cannot train."""
    for lo, hi in (cfg.segments, *cfg.curriculum):
        if cfg.segment_len < 16 or lo < 2 or hi < lo:
            raise ConfigError(
                f"segments {(lo, hi)} of {cfg.segment_len} tokens cannot train the memory: use "
                "at least 2 segments per sample (e.g. --segments 2-4) of 16+ tokens"
            )
    if cfg.init_adapter is not None and not Path(cfg.init_adapter).is_file():
        raise CheckpointError(f"adapter {cfg.init_adapter} not found: check --init-adapter or drop it")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.lora_rank < 0:
        raise ConfigError("steps and batch size must be positive and the LoRA rank not negative")
    get_variant(cfg.variant)  # before loading the model: an unknown variant or rule fails at once
    _memory_config(cfg)
    if len(cfg.mix) != 3 or min(cfg.mix) < 0:
        raise ConfigError(f"mix {cfg.mix} must be three non-negative shares: lm,passkey,summary")


def make_card(
    cfg: TrainConfig,
    loaded: Any,
    model: InfiniModel,
    *,
    step: int,
    tokens_seen: int,
    seconds: float,
    tokens_per_s: float,
    losses: Sequence[float],
    evaluation: dict[str, Any],
    world: int,
) -> dict[str, Any]:
    """The adapter's JSON card: base model, data, steps, tokens, settings, evaluation, hardware."""
    device = next(model.parameters()).device
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    gates = torch.sigmoid(model.gates.detach().float())
    return {
        "format": ADAPTER_FORMAT,
        "base_model": getattr(loaded, "name", model.name),
        "memory": {
            "segment_len": cfg.segment_len,
            "update": cfg.update,
            "gate_init": cfg.gate_init,
            "variant": cfg.variant,
            "exact_tokens": cfg.exact_tokens,  # the store it was trained beside (0: none)
        },
        "lora": lora_settings(model.hf),
        "full_finetune": cfg.full_finetune,
        "data": {
            "corpus": [p.name for p in corpus_files(cfg.corpus, cfg.exclude)],
            "excluded": list(cfg.exclude),
            "summaries": [str(p) for p in cfg.summaries],
            "mix": {"lm": cfg.mix[0], "passkey": cfg.mix[1], "summary": cfg.mix[2]},
        },
        "steps": step,
        "tokens_seen": tokens_seen,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens_per_s, 1),
        "loss": {"first": losses[0] if losses else None, "last10_mean": _tail_mean(losses, 10)},
        "gates": {
            "max": float(gates.max()),
            "mean": float(gates.mean()),
            "heads_above_0.5": int((gates > 0.5).sum()),
        },
        "settings": _jsonable(cfg),
        "eval": evaluation,
        "hardware": {
            "device": device.type,
            "name": hardware,
            "processes": world,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }


def _tail_mean(xs: Sequence[float], n: int) -> float | None:
    return sum(xs[-n:]) / len(xs[-n:]) if xs else None


def write_adapter(model: InfiniModel, out: Path, card: dict[str, Any]) -> None:
    """The adapter (safetensors, via the engine's ``save_adapter``) and its card beside it (``.json``);
    with full fine-tuning, the whole model is also saved as a directory named after ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out, card)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    if card.get("full_finetune"):
        model.hf.save_pretrained(out.with_suffix(""))
