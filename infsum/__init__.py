"""infsum: summarize whole books with an Infini-attention language model, in constant memory.

Library first: ``load_book`` reads EPUB, PDF and text; ``summarize`` streams a book through the
model and returns a ``SummaryResult``; ``score`` computes ROUGE. See README.md and docs/design.md.
Names are imported lazily so that ``import infsum`` (and ``infsum --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_book": "infsum.readers",
    "read_stream": "infsum.readers",
    "Book": "infsum.readers",
    "Chapter": "infsum.readers",
    "score": "infsum.scoring",
    "score_files": "infsum.scoring",
    "RougeScores": "infsum.scoring",
    "PassageIndex": "infsum.coverage",
    "Coverage": "infsum.coverage",
    "summary_coverage": "infsum.coverage",
    "MemoryConfig": "infsum.config",
    "GenerationConfig": "infsum.config",
    "SummarizeConfig": "infsum.config",
    "InfsumError": "infsum.errors",
    "summarize": "infsum.pipeline",
    "SummaryResult": "infsum.pipeline",
    "run_batch": "infsum.batch",
    "AskResult": "infsum.ask",  # ask() itself: ``from infsum.ask import ask`` (the module's name)
    "load_model": "infsum.models",
    "LoadedModel": "infsum.models",
    "DEFAULT_MODEL": "infsum.models",
    "load_tokenizer": "infsum.tokenizer",
    "Tokenizer": "infsum.tokenizer",
    "convert": "infsum.engine",
    "InfiniModel": "infsum.engine",
    "InfiniReader": "infsum.engine",
    "MemoryState": "infsum.engine",
    "save_state": "infsum.engine",
    "load_state": "infsum.engine",
    "save_adapter": "infsum.engine",
    "load_adapter": "infsum.engine",
    "ready": "infsum.engine",
    "STRATEGIES": "infsum.strategies",
    "run_passkey": "infsum.passkey",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'infsum' has no attribute {name!r}")
