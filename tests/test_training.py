"""Training the memory: parameter groups, loss, BPTT through memory, LoRA, checkpoints (issue 6)."""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infsum.config import MemoryConfig, TrainConfig
from infsum.coverage import PassageIndex
from infsum.engine.adapter import load_adapter
from infsum.engine.lora import LoRALinear, add_lora, add_lora_from_state
from infsum.engine.model import InfiniModel
from infsum.errors import CheckpointError, ConfigError
from infsum.evidence import part_evidence
from infsum.models import load_model
from infsum.passkey import KEY_SENTENCE
from infsum.prompt import chat_prompt
from infsum.tokenizer import load_tokenizer
from infsum.training import build_model, make_optimizer, sequence_loss, train, write_adapter
from infsum.training_data import IGNORE, DataMixture, part_targets, read_pairs

SEG = 32


def _hf(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu").model


def _cfg(tmp_path: Path, tiny_model_dir: Path, **kw) -> TrainConfig:
    base = dict(
        out=tmp_path / "a.safetensors",
        model=str(tiny_model_dir),
        device="cpu",
        steps=3,
        batch_size=2,
        segment_len=SEG,
        segments=(2, 3),
        mix=(0.0, 1.0, 0.0),
        warmup=1,
        lr=1e-2,
    )
    return TrainConfig(**{**base, **kw})


def test_gates_get_their_own_group_without_weight_decay(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir, gate_lr=0.07, lr=2e-4, weight_decay=0.1)
    model = build_model(_hf(tiny_model_dir), cfg)
    gates, body = make_optimizer(model, cfg).param_groups
    assert gates["params"] == [model.gates] and gates["weight_decay"] == 0.0 and gates["lr"] == 0.07
    assert body["weight_decay"] == 0.1 and body["lr"] == 2e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert body["params"] and all(".lora_" in names[id(p)] for p in body["params"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"gates"} | {names[id(p)] for p in body["params"]}  # the base model is frozen


def test_full_finetune_trains_every_weight(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = build_model(_hf(tiny_model_dir), _cfg(tmp_path, tiny_model_dir, full_finetune=True))
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_training_steps_reduce_the_loss_on_a_fixed_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir, lr=1e-2, gate_lr=5e-2)
    model = build_model(_hf(tiny_model_dir), cfg).train()
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 3 * SEG), generator=g)
    losses = []
    for _ in range(6):
        total, count = sequence_loss(model, ids, ids.clone())
        loss = total / count
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.1, losses


def _embedding_grads(model: InfiniModel, ids: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Gradient of the loss with respect to each segment's input embeddings."""
    outs: list[torch.Tensor] = []

    def keep(_mod, _inp, out):
        out.retain_grad()
        outs.append(out)

    handle = model.hf.model.embed_tokens.register_forward_hook(keep)
    try:
        total, count = sequence_loss(model, ids, labels, checkpointing=False)
        (total / count).backward()
    finally:
        handle.remove()
    return [o.grad for o in outs]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_key_in_segment_one_reaches_the_loss_in_segment_three(tiny_model_dir: Path, enabled: bool) -> None:
    hf = _hf(tiny_model_dir)
    for p in hf.parameters():
        p.requires_grad_(False)
    hf.model.embed_tokens.weight.requires_grad_(True)  # so each segment's input embeddings get a gradient
    model = InfiniModel(hf, MemoryConfig(segment_len=SEG, gate_init=-2.0, enabled=enabled))
    ids = torch.randint(0, 1000, (1, 3 * SEG), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2 * SEG + 5 :] = ids[:, 2 * SEG + 5 :]  # scored only inside segment 3
    grads = _embedding_grads(model, ids, labels)
    assert len(grads) == 3
    first = grads[0].abs().sum() if grads[0] is not None else torch.tensor(0.0)
    if enabled:  # through the memory written by segment 1 (and read by 2 and 3)
        assert first > 0 and model.gates.grad.abs().sum() > 0
    else:  # the control: without memory, segment 1 cannot affect segment 3
        assert first == 0


def test_checkpointing_gives_the_same_gradients(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir)
    ids = torch.randint(0, 1000, (2, 3 * SEG), generator=torch.Generator().manual_seed(2))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(_hf(tiny_model_dir), cfg)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, LoRALinear):
                    m.lora_B.normal_()  # non-zero B: gradients reach A too
        total, count = sequence_loss(model, ids, ids.clone(), checkpointing=ckpt)
        (total / count).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_lora_at_init_leaves_logits_unchanged(tiny_model_dir: Path) -> None:
    model = InfiniModel(_hf(tiny_model_dir), MemoryConfig(segment_len=SEG))
    ids = torch.randint(0, 1000, (1, SEG), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before, _ = model(ids)
        add_lora(model.hf, rank=4)
        after, _ = model(ids)
        torch.testing.assert_close(after, before)
        next(m for m in model.modules() if isinstance(m, LoRALinear)).lora_B.fill_(0.1)
        changed, _ = model(ids)
    assert (changed - before).abs().max() > 1e-4  # the adapter is on the forward path


def test_adapter_round_trip_keeps_gates_and_lora(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir, lora_rank=4, lora_alpha=4.0)
    model = build_model(_hf(tiny_model_dir), cfg).eval()
    with torch.no_grad():
        model.gates.uniform_(-3, 3)
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.05)
    path = tmp_path / "adapter.safetensors"
    write_adapter(model, path, {"lora": {"rank": 4, "alpha": 4.0}})
    tensors = load_file(str(path))
    assert "gates" in tensors and any(".lora_B" in k for k in tensors)
    fresh = InfiniModel(_hf(tiny_model_dir), MemoryConfig(segment_len=SEG, gate_init=-2.0)).eval()
    card = json.loads(path.with_suffix(".json").read_text())
    add_lora_from_state(fresh, tensors, alpha=card["lora"]["alpha"])
    assert load_adapter(fresh, path) == card
    ids = torch.randint(0, 1000, (1, 2 * SEG), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, state = model(ids[:, :SEG])
        want, _ = model(ids[:, SEG:], state)
        got, state = fresh(ids[:, :SEG])
        got, _ = fresh(ids[:, SEG:], state)
    torch.testing.assert_close(got, want)


def test_resumed_training_continues_the_step_count(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Stopping after one step and resuming gives the same run as training straight through."""
    cfg = _cfg(tmp_path, tiny_model_dir, segment_len=64, checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    straight = train(replace(cfg, out=tmp_path / "s.safetensors", checkpoint_dir=None))
    first = train(replace(cfg, max_seconds=0.0))  # stops (and checkpoints) after its first step
    assert first.steps == 1
    resumed = train(replace(cfg, resume=True))
    assert resumed.steps == 3 and len(resumed.losses) == 3
    assert json.loads((tmp_path / "ck" / "trainer.json").read_text())["step"] == 3
    assert resumed.tokens_seen == straight.tokens_seen
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-4)
    card = json.loads(cfg.out.with_suffix(".json").read_text())
    assert card["steps"] == 3 and card["tokens_seen"] == straight.tokens_seen and card["lora"]["rank"] == 8


def test_passkey_examples_score_only_the_answer(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    data = DataMixture(tok, _cfg(tmp_path, tiny_model_dir, segment_len=64))
    for seed in range(5):
        ex = data.example(3 * 64, random.Random(seed))
        assert ex.kind == "passkey" and len(ex.ids) == len(ex.labels) == 3 * 64
        scored = [i for i, lab in enumerate(ex.labels) if lab != IGNORE]
        answer = tok.decode([ex.ids[i] for i in scored])
        assert answer[0] == " " and answer[1:6].isdigit() and answer[6:] == "."
        key_ids = tok.encode(KEY_SENTENCE.format(key=answer[1:6]))
        at = next(i for i in range(len(ex.ids)) if ex.ids[i : i + len(key_ids)] == key_ids)
        assert at + len(key_ids) <= 2 * 64, "the key must lie before the last segment"
        assert scored[0] >= 2 * 64  # the answer is in the last segment


def test_summary_pairs_score_only_the_summary(tiny_model_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    responses = [{"response_text": "Plot one."}, {"response_text": "Plot two."}]
    squality = {"document": "A long story. " * 200, "questions": [{"responses": responses}]}
    pairs.write_text(
        json.dumps({"document": "Short story.", "summary": "It ends."}) + "\n" + json.dumps(squality) + "\n"
    )
    assert read_pairs(pairs) == [
        ("Short story.", "It ends."),
        (squality["document"], "Plot one."),
        (squality["document"], "Plot two."),
    ]
    tok = load_tokenizer(tiny_model_dir)
    data = DataMixture(tok, _cfg(tmp_path, tiny_model_dir, mix=(0.0, 0.0, 1.0), summaries=(pairs,)))
    for seed in range(4):
        ex = data.example(4 * SEG, random.Random(seed))
        scored = tok.decode([t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE])
        assert scored in {"It ends.<|im_end|>", "Plot one.<|im_end|>", "Plot two.<|im_end|>"}
        assert "Summarize the plot" in tok.decode(ex.ids)


# a story in three thirds that share no content word, and a summary with one sentence on each
THIRDS = (
    "The lighthouse keeper Marta counted ships passing the northern rocks each foggy night. ",
    "In spring the harbour master Osric audited grain barges moored beside the customs quay. ",
    "At midsummer the weaver Ida married a travelling fiddler under orchard blossom. ",
)
STORY = "".join(t * 40 for t in THIRDS)
SUMMARY_SENTENCES = (
    "Marta the lighthouse keeper counts ships by the northern rocks.",
    "Osric, the harbour master, audits the grain barges at the customs quay.",
    "Ida the weaver marries a travelling fiddler among the orchard blossom.",
)


def test_part_targets_group_the_summary_by_where_its_sentences_lie() -> None:
    index = PassageIndex(STORY)
    assert part_targets(index, " ".join(SUMMARY_SENTENCES), 3) == list(SUMMARY_SENTENCES)
    # an unplaced sentence goes with the one before it; unplaced first ones with the first placed one
    odd = "Zyx wvu tsr."
    summary = " ".join([odd, SUMMARY_SENTENCES[1], odd, SUMMARY_SENTENCES[2]])
    assert part_targets(index, summary, 3) == [
        "",
        f"{odd} {SUMMARY_SENTENCES[1]} {odd}",
        SUMMARY_SENTENCES[2],
    ]
    assert part_targets(index, odd, 2) == [odd, ""]


SEG2 = 64


def test_summary_pairs_give_part_examples_laid_out_as_infsum_writes_parts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    summary = " ".join(SUMMARY_SENTENCES)
    pairs.write_text(json.dumps({"document": STORY, "summary": summary}) + "\n")
    tok = load_tokenizer(tiny_model_dir)
    seg, length = SEG2, 8 * SEG2
    # a 50-word summary in parts of about 17 words: three parts, as `infsum BOOK --part-words 17`
    cfg = _cfg(
        tmp_path, tiny_model_dir, mix=(0.0, 0.0, 1.0), summaries=(pairs,), segment_len=seg, part_words=17
    )
    data = DataMixture(tok, cfg)
    doc = tok.encode(STORY)
    bounds = [round(k * len(doc) / 3) for k in range(4)]
    opening = chat_prompt(tok, "").opening
    seen = set()
    for seed in range(24):
        ex = data.example(length, random.Random(seed))
        scored = tok.decode([t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE])
        assert ex.kind == "summary" and len(ex.ids) == length
        assert tuple(ex.ids[: len(opening)]) == opening
        if scored == summary + "<|im_end|>":
            seen.add("whole")
            assert "Summarize the plot of the book above" in tok.decode(ex.ids)
            continue
        part = SUMMARY_SENTENCES.index(scored.removesuffix("<|im_end|>"))
        seen.add(part)
        share = tok.decode(doc[bounds[part] : bounds[part + 1]])
        words = round(len(SUMMARY_SENTENCES[part].split()) / 10) * 10
        evidence = part_evidence(
            tok, share, evidence_tokens=cfg.evidence_tokens, cast=cfg.cast, segment_len=SEG2
        )
        ask = evidence.part_ask(words)
        closing = chat_prompt(tok, ask).closing
        first_scored = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
        assert tuple(ex.ids[first_scored - len(closing) : first_scored]) == closing
        body = ex.ids[len(opening) : first_scored - len(closing)]
        assert (
            body and body == doc[bounds[part + 1] - len(body) : bounds[part + 1]]
        )  # ends at the share's end
    assert seen == {"whole", 0, 1, 2}
    whole_only = DataMixture(tok, replace(cfg, part_words=0))  # --part-words 0: as before parts
    for seed in range(6):
        ex = whole_only.example(length, random.Random(seed))
        assert tok.decode([t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE]) == (
            summary + "<|im_end|>"
        )


def test_passkey_anywhere_puts_keys_in_the_last_segment_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    data = DataMixture(tok, _cfg(tmp_path, tiny_model_dir, segment_len=64, passkey_anywhere=True))
    last = 0
    for seed in range(20):
        ex = data.example(3 * 64, random.Random(seed))
        answer = tok.decode([t for t, lab in zip(ex.ids, ex.labels, strict=True) if lab != IGNORE])
        key_ids = tok.encode(KEY_SENTENCE.format(key=answer[1:6]))
        at = next(i for i in range(len(ex.ids)) if ex.ids[i : i + len(key_ids)] == key_ids)
        last += at >= 2 * 64
    assert 0 < last < 20  # keys land in the last (local) segment and before it


def test_gzipped_pairs_read_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    record = json.dumps({"document": "Short story.", "summary": "It ends."}) + "\n"
    (tmp_path / "p.jsonl").write_text(record)
    with gzip.open(tmp_path / "p.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(record)
    assert (
        read_pairs(tmp_path / "p.jsonl.gz")
        == read_pairs(tmp_path / "p.jsonl")
        == [("Short story.", "It ends.")]
    )


def test_the_curriculum_moves_through_its_stages(tiny_model_dir: Path, tmp_path: Path) -> None:
    from infsum.training import _Run, segments_now

    cfg = _cfg(tmp_path, tiny_model_dir, steps=6, curriculum=((2, 2), (2, 3), (3, 4)))
    assert [segments_now(cfg, _Run(step=k)) for k in range(6)] == [(2, 2)] * 2 + [(2, 3)] * 2 + [(3, 4)] * 2
    timed = replace(cfg, max_seconds=10.0)  # time runs out before the steps do: the stages follow it
    assert segments_now(timed, _Run(step=0, t0=time.perf_counter() - 7.0)) == (3, 4)
    assert segments_now(replace(cfg, curriculum=()), _Run(step=5)) == (2, 3)  # no curriculum: segments
    with pytest.raises(ConfigError, match=r"segments \(1, 2\) of 32 tokens cannot train"):
        train(replace(cfg, curriculum=((2, 2), (1, 2))))


def test_training_continues_from_an_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = train(_cfg(tmp_path, tiny_model_dir, segment_len=64, steps=2))
    trained = load_file(str(first.adapter))
    # a learning rate of 0: the run starts from the adapter's gates and LoRA and keeps them exactly
    again = _cfg(tmp_path, tiny_model_dir, segment_len=64, steps=1, lr=0.0, gate_lr=0.0)
    second = train(replace(again, init_adapter=first.adapter, out=tmp_path / "b.safetensors"))
    kept = load_file(str(second.adapter))
    assert set(kept) == set(trained) and all(torch.equal(kept[k], v) for k, v in trained.items())
    fresh = load_file(str(train(replace(again, out=tmp_path / "c.safetensors")).adapter))
    assert not torch.equal(fresh["gates"], trained["gates"])  # without it the gates start at their init
    with pytest.raises(CheckpointError, match="not found: check --init-adapter"):
        train(replace(again, init_adapter=tmp_path / "missing.safetensors"))


DDP_SCRIPT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from infsum.config import TrainConfig
from infsum.training import train
cfg = TrainConfig(out=Path(sys.argv[2]), model=sys.argv[1], device="cpu", steps=2, batch_size=1,
                  segment_len=64, segments=(2, 2), mix=(0.0, 1.0, 0.0), warmup=1)
r = train(cfg)
if r.card:  # only the main process writes the adapter and returns its card
    print("WROTE", flush=True)
"""


def test_two_processes_train_data_parallel(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`accelerate launch` with two CPU processes (torchrun + gloo): samples differ per process,
    gradients are averaged, only the main process writes the adapter."""
    import os
    import shutil
    import subprocess

    # accelerate is a dependency: its launcher sits beside this Python even when the venv is not on PATH
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert launcher, "the accelerate launcher is missing: pip install -e ."
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "a.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(tiny_model_dir),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["hardware"]["processes"] == 2
    assert card["tokens_seen"] == 2 * 2 * 128  # processes x steps x (1 sample of 2 segments of 64)
    assert proc.stdout.count("WROTE") == 1, proc.stdout


def test_lora_targets_that_name_no_projection_are_a_config_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from infsum.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no linear layer named any of \('qkv',\) to add LoRA to"):
        build_model(_hf(tiny_model_dir), _cfg(tmp_path, tiny_model_dir, lora_targets=("qkv",)))


def test_an_unknown_update_rule_fails_before_the_model_loads(tmp_path: Path) -> None:
    from infsum.errors import ConfigError

    cfg = TrainConfig(out=tmp_path / "a.safetensors", model=str(tmp_path / "no-such-model"), update="nope")
    with pytest.raises(ConfigError, match="unknown memory update rule 'nope'"):
        train(cfg)
