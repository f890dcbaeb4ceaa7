"""Every bound on the work infsum does for one input, in one place.

Each bound is a module constant below. To raise (or lower) one without changing code, set the
environment variable ``INFSUM_`` + its name, e.g. ``INFSUM_MAX_BOOK_MB=4096``; ``get(name)`` reads
it at call time, so it also works from a running program (``os.environ[...] = ...``) and in tests.
That is the one override mechanism; error messages that hit a bound name its variable.

The defaults are generous for real books and refuse what is not one:

- ``MAX_TEXT_MB = 64``: a .txt/.md file. A 1M-word novel is about 6 MB in UTF-8, 12 MB in UTF-16;
  the whole file is decoded in memory (up to 4 bytes a character), so 64 MB costs at most ~0.3 GB.
- ``MAX_BOOK_MB = 1024``: a .pdf/.epub file. An illustrated 300 MB PDF fits three times over;
  pypdf holds the whole file in memory, so this is also the PDF's memory floor.
- ``MAX_ENTRY_MB = 64``, ``MAX_UNPACKED_MB = 512``, ``MAX_RATIO = 100``, ``RATIO_FLOOR_MB = 1``,
  ``MAX_ENTRIES = 10000``: an EPUB's zip, checked against its directory before anything is inflated
  (ebooklib keeps every entry in memory: images of a few MiB each, text files under 2 MiB).
- ``MAX_MARKUP_MB = 64``: all of an EPUB's XHTML/XML entries together, uncompressed. Each is parsed
  into an lxml tree (~10x its size in memory); Moby-Dick's 212,889 words are 1.5 MB of XHTML, so a
  1M-word book needs ~8 MB.
- ``MAX_SCORE_MB = 1``: a summary or reference file to score (a 1,000-word summary is ~6 KB).
- ``MAX_SCORE_TOKENS = 5000``: ROUGE tokens (lower-cased letter/digit runs) in one summary or
  reference, about 4,500 words; real summaries are 200 to 1,000 words. ROUGE-L's longest common
  subsequence table is summary x reference tokens, time and memory: 4,000 x 4,000 took 5.6 s and
  180 MB here, so 5,000 x 5,000 stays under ~10 s. Longer texts are refused (``ScoringError``), not
  capped: a capped text would get a score that is not its own.
- ``MAX_INSTRUCTION_CHARS = 4000``: a user's summary instruction (``--instruction``), about 1,000
  tokens. It is generated from in the local segment, beside the book's last tokens, so every token
  of it is one token of the book fewer in view.
"""

from __future__ import annotations

import os

from .errors import ConfigError

MAX_TEXT_MB = 64
MAX_BOOK_MB = 1024
MAX_ENTRY_MB = 64
MAX_UNPACKED_MB = 512
MAX_RATIO = 100
RATIO_FLOOR_MB = 1
MAX_ENTRIES = 10_000
MAX_MARKUP_MB = 64
MAX_SCORE_MB = 1
MAX_SCORE_TOKENS = 5_000
MAX_INSTRUCTION_CHARS = 4_000

MB = 1024 * 1024


def env_name(name: str) -> str:
    """The environment variable that overrides bound ``name`` (``INFSUM_MAX_BOOK_MB``)."""
    return f"INFSUM_{name}"


def get(name: str) -> int:
    """The bound ``name``: its environment override when set, else the constant above."""
    default = globals()[name]
    value = os.environ.get(env_name(name), "").strip()
    if not value:
        return default
    try:
        bound = int(value)
    except ValueError:
        bound = 0
    if bound <= 0:
        raise ConfigError(f"{env_name(name)}={value!r}: not a positive whole number; fix or unset it")
    return bound


def over_mb(name: str, size: int) -> tuple[int, int] | None:
    """(size in whole MB rounded up, the bound in MB) when ``size`` bytes exceed the MB bound ``name``;
    None when they fit."""
    limit = get(name)
    return (-(-size // MB), limit) if size > limit * MB else None


def raise_hint(name: str, needed: int) -> str:
    """The fix part of a message: which variable to set, to at least ``needed``."""
    return f"set {env_name(name)}={needed} (or more) to allow it"
