"""The Infini-attention engine: memory math, model conversion, and the streaming segment loop."""

from infsum.engine.memory import MemoryState, gate, read_memory, sigma, update_memory
from infsum.engine.patch import InfiniModel, LocalCache, convert, load_adapter, save_adapter
from infsum.engine.stream import InfiniReader, ReaderState, load_state, save_state

__all__ = [
    "InfiniModel",
    "InfiniReader",
    "LocalCache",
    "MemoryState",
    "ReaderState",
    "convert",
    "gate",
    "load_adapter",
    "load_state",
    "read_memory",
    "save_adapter",
    "save_state",
    "sigma",
    "update_memory",
]
