"""Seconds to read each shared book file with ``infsum.load_book``, printed as JSON.

    python bench/read_speed.py [--shared ../shared] [--tokenizer tests/fixtures/smollm2-tokenizer]

For each file in data/epub, data/pdf and data/books/*/text.txt: seconds, words, chapters, and the
number of SmolLM2 tokens (so reading time can be set against the time the model needs for them);
files infsum refuses (encrypted, scans) report the error class instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from infsum.errors import InfsumError
from infsum.readers import load_book

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {  # from data/README.md
    "pypdf_r4-aes-user-password_ENC.pdf": "asdfzxcv",
    "samplefiles_005_libreoffice-writer-password_ENC.pdf": "openpassword",
}


def files(shared: Path) -> list[Path]:
    data = shared / "data"
    return [*sorted((data / "epub").glob("*.epub")), *sorted((data / "pdf").glob("*.pdf")),
            *sorted((data / "books").glob("*/text.txt"))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tests" / "fixtures" / "smollm2-tokenizer")
    args = parser.parse_args()
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # "Rotated text discovered" on the 3-column PDF
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json"))
    results = {}
    for path in files(args.shared):
        name = str(path.relative_to(args.shared / "data"))
        start = time.perf_counter()
        try:
            book = load_book(path, password=PASSWORDS.get(path.name))
        except InfsumError as e:
            results[name] = {"seconds": round(time.perf_counter() - start, 3), "error": type(e).__name__}
            continue
        seconds = time.perf_counter() - start
        tokens = len(tokenizer.encode(book.text).ids)
        results[name] = {"seconds": round(seconds, 3), "words": book.words, "chapters": len(book.chapters),
                         "tokens": tokens}  # fmt: skip
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
