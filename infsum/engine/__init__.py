"""The Infini-attention engine: memory math, the model with memory, adapters and the ready model,
and streaming."""

from infsum.engine.adapter import (
    ADAPTER_FORMAT,
    DEFAULT_ADAPTER,
    AdapterChoice,
    Ready,
    load_adapter,
    ready,
    resolve_adapter,
    save_adapter,
)
from infsum.engine.memory import ExactStore, MemoryState, gate, read_memory, sigma, update_memory
from infsum.engine.model import InfiniModel, LocalCache, convert
from infsum.engine.stream import (
    InfiniReader,
    ReaderState,
    check_identity,
    identity,
    load_state,
    save_state,
)

__all__ = [
    "ADAPTER_FORMAT",
    "DEFAULT_ADAPTER",
    "AdapterChoice",
    "ExactStore",
    "Ready",
    "InfiniModel",
    "InfiniReader",
    "LocalCache",
    "MemoryState",
    "ReaderState",
    "check_identity",
    "convert",
    "gate",
    "identity",
    "load_adapter",
    "load_state",
    "read_memory",
    "ready",
    "resolve_adapter",
    "save_adapter",
    "save_state",
    "sigma",
    "update_memory",
]
