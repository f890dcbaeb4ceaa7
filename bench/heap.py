"""Peak RSS of the default summary job, and what glibc's heap holds at that peak (JSON to stdout).

    python bench/heap.py BOOK [BOOK ...]                       # each book with and without the trim
    python bench/heap.py short.txt long.txt --modes trim       # this checkout only

Every (book, mode) runs ``infsum.summarize`` with the default settings in a child process of its
own, one after the other, while a thread samples the process twice a second: RSS from /proc, and
glibc's ``mallinfo2`` (the heap's bytes in use, its free bytes, the bytes in mmapped blocks). Modes:
``trim`` is infsum as it is (``InfiniReader`` gives the heap's freed memory back after every
segment and every answer, ``engine.stream.release_freed``); ``none`` is the same run with that call
made a no-op (never trimmed; until 7 December 2026 infsum trimmed after an answer decoded from the
float16 copies only). Prints one JSON line per run: tokens, streaming tokens/s, wall seconds, peak
RSS in MiB, and the sample at the peak (its stage and the heap's figures in MiB). Linux with glibc
only (``mallinfo2``: glibc 2.33 and later).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import threading
import time


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


def _rss_mib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def child(book: str, mode: str) -> dict:
    """Summarize ``book`` in this process with the trim on (``trim``) or off (``none``) -> the figures."""
    from infsum.engine import stream
    from infsum.pipeline import summarize

    if mode == "none":
        stream.release_freed = lambda: False
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    stage, samples, done = ["start"], [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            m = libc.mallinfo2()
            samples.append(
                {
                    "stage": stage[0],
                    "rss": _rss_mib(),
                    "in_use": m.uordblks >> 20,
                    "free": m.fordblks >> 20,
                    "mmapped": m.hblkhd >> 20,
                }  # fmt: skip
            )
            done.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    result = summarize(book, progress=lambda step: stage.__setitem__(0, step.stage))
    wall = time.perf_counter() - t
    done.set()
    thread.join()
    return {
        "book": book,
        "mode": mode,
        "tokens": result.tokens,
        "stream_tokens_per_s": result.tokens_per_s,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(result.peak_rss_mb),
        "at_peak": max(samples, key=lambda s: s["rss"]),
    }


def main() -> None:
    """Run every book in every mode, one child process each, and print their JSON lines."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("books", nargs="*", help="text, EPUB or PDF files")
    p.add_argument("--modes", default="trim,none", help="comma-separated: trim (infsum as it is), none")
    p.add_argument("--child", nargs=2, metavar=("BOOK", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if not args.books:
        p.error("give at least one book")
    modes = args.modes.split(",")
    if unknown := set(modes) - {"trim", "none"}:
        p.error(f"--modes: unknown {', '.join(sorted(unknown))}; choose from trim, none")
    for book in args.books:
        for mode in modes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", book, mode],
                capture_output=True,
                text=True,
                check=True,
            )
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
