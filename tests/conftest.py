"""Shared fixtures: an isolated cache, a tiny random-weight Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own infsum cache, so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("INFSUM_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _float32_by_default() -> Iterator[None]:
    """The default dtype follows the CPU (bfloat16 where it is native): tests see a CPU without
    native bfloat16, so they run in float32 whatever machine runs them (session-wide, so models that
    module-scoped fixtures load see it too; tests that run infsum in a subprocess see the real CPU);
    a test that wants the other CPU patches ``infsum.models.cpu_flags`` itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("infsum.models.cpu_flags", lambda: frozenset())
        yield


def build_tiny_model_dir(path: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer random-weight Llama (GQA: 4 query heads over 2 kv heads) with the real
    SmolLM2 tokenizer files into ``path``; loadable with transformers or ``infsum.models``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,  # must match the real tokenizer
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    for f in (FIXTURES / "smollm2-tokenizer").iterdir():
        shutil.copy(f, path / f.name)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny random-weight Llama-family model and the real SmolLM2 tokenizer."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it are skipped where it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED
