"""The summarization pipeline on the tiny random-weight model: the chat it builds, progress, adapters.

A random model writes nonsense: these tests check the pipeline's plumbing and bookkeeping, not quality.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import convert, load_state, save_adapter
from infsum.errors import CheckpointError, ConfigError
from infsum.models import load_model
from infsum.pipeline import Summarizer, summarize
from infsum.prompt import INSTRUCTION, book_tokens, chapter_at, max_new_tokens, trim_to_sentence
from infsum.readers import Book, Chapter

torch.set_num_threads(2)

BOOK = Book(
    title="The Keeper",
    author="A. Writer",
    language="en",
    chapters=(
        Chapter("One", "The keeper counted ships every night.\n\nHe wrote their names in a book. " * 4),
        Chapter("Empty", ""),
        Chapter("Two", "One winter a ship came with no name, and he rowed out to meet it. " * 4),
    ),
    source="keeper.epub",
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def config(tiny_model_dir: Path, **kw) -> SummarizeConfig:
    return SummarizeConfig(model=str(tiny_model_dir), words=6, memory=MemoryConfig(segment_len=32), **kw)


def test_book_tokens_are_the_chat_opening_then_the_book(loaded) -> None:
    tok = loaded.tokenizer
    ids, starts = book_tokens(tok, BOOK)
    before, _ = tok.chat_parts()
    assert tok.decode(ids) == before + BOOK.text
    assert [title for _, title in starts] == ["One", "Two"]  # the empty chapter adds no text
    two = starts[1][0]
    assert tok.decode(ids[two:]).startswith("\n\nOne winter")
    assert chapter_at(starts, 0) is None  # the chat opening belongs to no chapter
    assert chapter_at(starts, starts[0][0]) == "One" and chapter_at(starts, two - 1) == "One"
    assert chapter_at(starts, two) == "Two"


def test_summarize_a_book_value(loaded, tiny_model_dir: Path) -> None:
    steps = []
    result = summarize(BOOK, config(tiny_model_dir), model=loaded, progress=steps.append)
    tok = loaded.tokenizer
    assert result.tokens == len(book_tokens(tok, BOOK)[0])
    assert result.segments == -(-result.tokens // 32)
    assert (result.title, result.author, result.input, result.words) == (
        "The Keeper",
        "A. Writer",
        "keeper.epub",
        112,
    )
    assert result.model == str(tiny_model_dir) and result.strategy == "infini" and result.adapter is None
    assert result.generation["max_new_tokens"] == max_new_tokens(6) == 10
    assert result.generation["min_new_tokens"] == 5  # half the budget: no one-sentence answers
    stream = [s for s in steps if s.stage == "stream"]
    assert [s.done for s in stream] == list(range(32, result.tokens // 32 * 32 + 1, 32))
    assert stream[0].detail == "One" and stream[-1].detail == "Two"
    assert not [s for s in steps if s.stage == "load"]  # the model was passed in: nothing loaded
    generated = [s.done for s in steps if s.stage == "generate"]
    assert generated == list(range(1, len(generated) + 1)) and len(generated) <= 10
    md = result.markdown()
    assert md.startswith(f"# Summary of The Keeper by A. Writer\n\n{result.summary}\n\n---\n")
    assert f"{result.tokens:,} tokens in {result.segments} segments of 32" in md


def test_greedy_summary_is_reproducible_and_prompt_is_after_the_book(loaded, tiny_model_dir: Path) -> None:
    cfg = config(tiny_model_dir, evidence_tokens=0, cast=0)  # the instruction alone (see test_evidence)
    first = summarize(BOOK, cfg, model=loaded).summary
    assert summarize(BOOK, cfg, model=loaded).summary == first
    # the same generation by hand: book streamed, then the instruction and the assistant turn
    from infsum.engine import InfiniReader

    tok = loaded.tokenizer
    reader = InfiniReader(convert(loaded.model, cfg.memory))
    state = reader.read(book_tokens(tok, BOOK)[0])
    prompt = tok.encode("\n\n" + INSTRUCTION.format(words=6)) + tok.encode_chat_scaffold(tok.chat_parts()[1])
    gen = replace(cfg.generation, max_new_tokens=10)
    assert tok.decode(reader.generate(state, prompt, gen, tok.eos_ids), skip_special=True).strip() == first


def test_model_is_loaded_once_per_summarizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    book = tmp_path / "b.txt"
    book.write_text("A short story about a fox. " * 20, encoding="utf-8")
    steps = []
    summarizer = Summarizer(config(tiny_model_dir))
    summarizer(book, progress=steps.append)
    summarizer(book, references=["A fox."], progress=steps.append)
    assert [s.done for s in steps if s.stage == "load"].count(1) == 1


def test_adapter_path_is_loaded_and_recorded(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir)
    model = convert(loaded.model, cfg.memory)
    with torch.no_grad():
        model.gates.fill_(3.0)  # lean on memory: a different model from the untrained conversion
    adapter = tmp_path / "gates.safetensors"
    save_adapter(model, adapter, {"note": "test"})
    with_adapter = summarize(BOOK, replace(cfg, adapter=str(adapter)), model=loaded)
    assert with_adapter.adapter == str(adapter)
    assert with_adapter.to_dict()["adapter"] == str(adapter)
    assert with_adapter.markdown().count("adapter gates.safetensors") == 1
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(CheckpointError, match=f"^adapter {missing} not found: check the path"):
        summarize(BOOK, replace(cfg, adapter=str(missing)), model=loaded)
    with pytest.raises(CheckpointError, match=f"^adapter {missing} not found"):  # a Path is the same choice
        summarize(BOOK, replace(cfg, adapter=missing), model=loaded)


def test_default_adapter_only_applies_to_the_default_model(loaded, tiny_model_dir: Path) -> None:
    assert not loaded.is_default
    model, adapter = Summarizer(config(tiny_model_dir), model=loaded).infini(lambda step: None)
    assert adapter is None and torch.equal(model.gates, torch.full_like(model.gates, -6.0))


def test_state_is_saved_after_reading(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    result = summarize(BOOK, config(tiny_model_dir), model=loaded, state_path=path)
    state = load_state(path)
    assert state.n_read == result.tokens and state.segment_len == 32
    with pytest.raises(ConfigError, match="only the infini strategy"):
        summarize(BOOK, config(tiny_model_dir, strategy="lead"), state_path=path)


def test_extractive_strategy_needs_no_model(tmp_path: Path) -> None:
    cfg = SummarizeConfig(model=str(tmp_path / "no-such-model"), strategy="lead", words=4)
    result = summarize(BOOK, cfg, references=["The keeper counted ships."])
    assert result.summary == "The keeper counted ships"
    assert result.model is None and result.tokens == 0 and result.rouge.rouge1.recall == 1.0
    assert set(result.to_dict()["rouge"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "overall"}


def test_a_summary_cut_off_by_the_budget_ends_at_its_last_full_sentence() -> None:
    assert trim_to_sentence(" Adam meets Eve. They talk in the garden. The priest said that he ") == (
        "Adam meets Eve. They talk in the garden."
    )
    assert trim_to_sentence('He asks "Why?" She said nothing.') == 'He asks "Why?" She said nothing.'
    assert trim_to_sentence('"Run," he said. "Now!" And then the') == '"Run," he said. "Now!"'
    assert trim_to_sentence("One long clause with no end") == "One long clause with no end"
    # never cut away more than half of the text
    assert trim_to_sentence("Short. " + "a very long unfinished sentence " * 5).startswith("Short. a very")


def test_an_adapter_does_not_leak_into_a_later_run_without_it(tiny_model_dir, tmp_path) -> None:
    """LoRA from one Summarizer's adapter is removed before another Summarizer on the same loaded
    model runs without an adapter (the evaluation harness compares the two on one model)."""
    from infsum.engine.lora import LoRALinear, add_lora

    loaded = load_model(str(tiny_model_dir), device="cpu")
    trained = convert(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir), MemoryConfig())
    add_lora(trained, rank=2)
    save_adapter(trained, tmp_path / "a.safetensors", {"lora": {"rank": 2, "alpha": 4}})
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    with_adapter = Summarizer(SummarizeConfig(adapter=str(tmp_path / "a.safetensors")), model=loaded)
    with_adapter.infini(lambda step: None)
    assert any(isinstance(m, LoRALinear) for m in loaded.model.modules())
    Summarizer(SummarizeConfig(adapter=None), model=loaded).infini(lambda step: None)
    assert not any(isinstance(m, LoRALinear) for m in loaded.model.modules())
