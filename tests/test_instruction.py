"""The user's own summary instruction (``--instruction``, ``--instruction-file``): what reaches the
model, what the JSON records, and every error a user can cause, on the tiny random model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from infsum.cli import app
from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import InfiniReader, convert
from infsum.errors import ConfigError
from infsum.models import load_model
from infsum.pipeline import Summarizer, summarize
from infsum.prompt import (
    INSTRUCTION,
    book_tokens,
    chat_prompt,
    load_instruction,
    summary_instruction,
    trim_to_sentence,
)
from infsum.readers import Book, Chapter
from infsum.strategies import STRATEGIES, Job, WindowSummarizer

torch.set_num_threads(2)
runner = CliRunner()
STORY = (
    "CHAPTER I\n\nThe lighthouse keeper counted the ships every night. He wrote their names in a book.\n\n"
    "CHAPTER II\n\nOne winter a ship came that had no name. The keeper rowed out to meet it.\n"
)
BOOK = Book(
    "The Keeper",
    None,
    "en",
    (Chapter("One", "The keeper counted ships every night. He wrote their names in a book. " * 6),),
    "keeper.txt",
)


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "keeper.txt"
    path.write_text(STORY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def test_summary_instruction_fills_words_and_leaves_other_braces() -> None:
    assert summary_instruction(50) == INSTRUCTION.format(words=50)
    assert summary_instruction(50, "List the ships in {words} words; {words} at most.") == (
        "List the ships in 50 words; 50 at most."
    )
    assert summary_instruction(50, "Name the {main} characters.") == "Name the {main} characters."


def test_load_instruction_reads_strips_and_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "ask.txt"
    good.write_text("\n  Tell the ending in {words} words.\n\n", encoding="utf-8")
    assert load_instruction(good) == "Tell the ending in {words} words."
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{empty}: the instruction file is empty; write the instruction"):
        load_instruction(empty)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(
        ConfigError, match=f"^{binary}: cannot read the instruction .*give a UTF-8 text file$"
    ):
        load_instruction(binary)


def test_config_refuses_a_blank_or_overlong_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="^the instruction is empty: give --instruction some words"):
        SummarizeConfig(instruction=" \n ")
    monkeypatch.setenv("INFSUM_MAX_INSTRUCTION_CHARS", "10")
    with pytest.raises(ConfigError, match="has 11 characters, over 10: .*INFSUM_MAX_INSTRUCTION_CHARS=11"):
        SummarizeConfig(instruction="x" * 11)
    assert SummarizeConfig(instruction="x" * 10).instruction == "x" * 10


def test_infini_generates_from_the_users_instruction(loaded, tiny_model_dir: Path) -> None:
    ask = "Tell me about the keeper in {words} words."
    cfg = SummarizeConfig(
        model=str(tiny_model_dir),
        words=6,
        memory=MemoryConfig(segment_len=32),
        instruction=ask,
        evidence_tokens=0,  # the ask is the instruction alone (infsum.evidence adds passages)
        cast=0,
    )
    result = summarize(BOOK, cfg, model=loaded)
    assert result.instruction == "Tell me about the keeper in 6 words."
    assert result.to_dict()["instruction"] == result.instruction
    assert result.generation["max_new_tokens"] == 10  # the budget still follows --words
    # by hand: the book streamed, then the user's instruction closes the turn
    tok = loaded.tokenizer
    reader = InfiniReader(convert(loaded.model, cfg.memory))
    state = reader.read(book_tokens(tok, BOOK)[0])
    gen = replace(cfg.generation, max_new_tokens=10, min_new_tokens=5)
    prompt = chat_prompt(tok, "Tell me about the keeper in 6 words.").closing
    out = reader.generate(state, prompt, gen, tok.eos_ids)
    assert result.summary == trim_to_sentence(tok.decode(out, skip_special=True))
    builtin = summarize(BOOK, replace(cfg, instruction=None), model=loaded)
    assert builtin.instruction == INSTRUCTION.format(words=6)


@pytest.mark.parametrize("name", ["truncate-head", "truncate-tail", "hierarchical"])
def test_model_baselines_ask_the_users_instruction(loaded, monkeypatch, name: str) -> None:
    asked: list[str] = []
    monkeypatch.setattr(
        WindowSummarizer,
        "summarize",
        lambda self, ids, instruction, words, *a: asked.append(instruction) or "",
    )
    STRATEGIES[name].run(Job(BOOK, 20, loaded=loaded, instruction="Who is in it? {words} words."))
    assert asked[-1] == "Who is in it? 20 words."  # hierarchical: the final call; chunks keep theirs


def test_extractive_strategy_refuses_an_instruction() -> None:
    with pytest.raises(ConfigError, match="^strategy 'textrank' picks sentences and takes no instruction"):
        Summarizer(SummarizeConfig(strategy="textrank", instruction="Summarize."))


def test_cli_instruction_is_recorded_in_the_json(book: Path, tiny_model_dir: Path) -> None:
    args = [str(book), "--model", str(tiny_model_dir), "--segment-len", "16", "--words", "5", "--json"]
    result = runner.invoke(app, [*args, "--instruction", "Name the ships in {words} words.", "-q"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["instruction"] == "Name the ships in 5 words."
    assert data["generation"]["max_new_tokens"] == 8


def test_cli_instruction_file(book: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    ask = tmp_path / "ask.txt"
    ask.write_text("What happened in winter?\n", encoding="utf-8")
    args = [str(book), "--model", str(tiny_model_dir), "--segment-len", "16", "--words", "5", "--json"]
    result = runner.invoke(app, [*args, "--instruction-file", str(ask), "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["instruction"] == "What happened in winter?"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--strategy", "lead", "--instruction", "Summarize."],
            "strategy 'lead' picks sentences and takes no",
        ),
        (["--instruction", ""], "the instruction is empty: give --instruction some words, or leave it out"),
        (
            ["--instruction", "a", "--instruction-file", "x.txt"],
            "give --instruction or --instruction-file, not both",
        ),
        (["--instruction-file", "nowhere.txt"], "nowhere.txt: instruction file not found; check the path"),
    ],
)
def test_cli_instruction_errors_are_one_line_and_exit_2(book: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [str(book), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_batch_takes_the_instruction_option_too(book: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["batch", str(book.parent), "-o", str(tmp_path / "out"), "--strategy", "lead", "--instruction", "x"],
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: strategy 'lead' picks sentences and takes no instruction")
