"""Tokenizer benchmark: infsum's tiktoken encoding against the Hugging Face tokenizer on one book.

Usage (from the repository root):

    python -m bench.tokenize                      # the longest shared book, SmolLM2's tokenizer
    python -m bench.tokenize --book PATH --tokenizer-dir MODEL_DIR --repeat 5

Prints one JSON object: the book's size, build times, and for each backend the best of ``--repeat``
encodes in tokens/s (tiktoken through ``infsum.tokenizer``; HF both as the bare ``tokenizers``
library and through transformers' ``AutoTokenizer``), the speedups, and whether the ids agree.
The default tokenizer directory is the test fixture, a copy of SmolLM2-135M-Instruct's files.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from infsum.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT.parent / "shared" / "data" / "books"
SMOLLM2_TOKENIZER = ROOT / "tests" / "fixtures" / "smollm2-tokenizer"


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run(book: Path, tokenizer_dir: Path, repeat: int) -> dict[str, object]:
    """Build both tokenizers, encode ``book`` with each, and report speeds and agreement."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    text = book.read_text(encoding="utf-8")
    tok, build_tiktoken = timed(lambda: load_tokenizer(tokenizer_dir))
    hf, build_hf = timed(lambda: HFTokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    hf.encode_special_tokens = True  # special-token text in a book is plain text, as in infsum
    auto, build_auto = timed(lambda: AutoTokenizer.from_pretrained(tokenizer_dir))
    ids = tok.encode(text)
    hf_ids = hf.encode(text, add_special_tokens=False).ids
    auto_ids = auto(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    seconds = {
        "tiktoken": best_seconds(lambda: tok.encode(text), repeat),
        "hf_tokenizers": best_seconds(lambda: hf.encode(text, add_special_tokens=False), repeat),
        "hf_transformers": best_seconds(
            lambda: auto(text, add_special_tokens=False, split_special_tokens=True), repeat
        ),
    }
    return {
        "book": book.parent.name if book.name == "text.txt" else book.name,
        "chars": len(text),
        "tokens": len(ids),
        "backend": tok.backend,
        "ids_equal_hf_tokenizers": ids == hf_ids,
        "ids_equal_hf_transformers": ids == auto_ids,
        "build_s": {
            "infsum_tiktoken_verified": build_tiktoken,
            "hf_tokenizers": build_hf,
            "hf_auto": build_auto,
        },
        "encode_s": seconds,
        "tokens_per_s": {name: len(ids) / s for name, s in seconds.items()},
        "speedup_vs_hf_tokenizers": seconds["hf_tokenizers"] / seconds["tiktoken"],
        "speedup_vs_hf_transformers": seconds["hf_transformers"] / seconds["tiktoken"],
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", type=Path, help="a UTF-8 text file (default: the longest shared book)")
    parser.add_argument("--tokenizer-dir", type=Path, default=SMOLLM2_TOKENIZER)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    book = args.book or max(BOOKS.glob("*/text.txt"), key=lambda p: p.stat().st_size)
    print(json.dumps(run(book, args.tokenizer_dir, args.repeat), indent=2))


if __name__ == "__main__":
    main()
