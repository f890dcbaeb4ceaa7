"""The final prompt's evidence: the book's central passages and main names beside the instruction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import InfiniReader, convert
from infsum.errors import ConfigError
from infsum.evidence import CAST_LINE, PASSAGES_HEADER, central_passages, summary_ask
from infsum.models import load_model
from infsum.names import characters
from infsum.pipeline import summarize
from infsum.prompt import INSTRUCTION, book_tokens, chat_prompt, max_new_tokens, min_new_tokens
from infsum.readers import Book, Chapter
from infsum.sentences import split_sentences

torch.set_num_threads(2)

# the central sentence shares words with every other; the bread sentences share nothing
STORY = (
    "The lighthouse keeper Mara watched the harbour from the tower every night. "
    "Ships came into the harbour at dusk and Mara logged each ship in the tower book. "
    "Mara, the keeper of the tower, saw a ship without lights enter the harbour one night. "
    "The ship without lights anchored in the harbour and Mara rowed out with the tower lamp. "
    "Bread rises slowly in a warm kitchen when the yeast is fresh and patient. "
    "Flour dust settles on the old wooden table beside a bowl of plums."
)
BOOK = Book(
    title="The Keeper",
    author=None,
    language="en",
    chapters=(Chapter("One", STORY), Chapter("Two", "Mara wrote the name Osric in the tower book. " * 3)),
    source="keeper.txt",
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def test_ask_layout_passages_then_names_then_instruction() -> None:
    assert summary_ask("Summarize.") == "Summarize."
    assert summary_ask("Summarize.", ["First one.", "Second one."], ["Mara", "Osric", "Ida"]) == (
        f"{PASSAGES_HEADER}\nFirst one.\nSecond one.\n\n"
        f"{CAST_LINE.format(names='Mara, Osric and Ida')}\n\nSummarize."
    )
    assert summary_ask("Summarize.", cast=["Mara"]) == CAST_LINE.format(names="Mara") + "\n\nSummarize."


def test_central_passages_fit_the_token_budget_in_reading_order(loaded) -> None:
    tok = loaded.tokenizer
    sentences = split_sentences(STORY)
    assert central_passages(STORY, tok, 0) == []
    assert central_passages("Too short. Also short.", tok, 500) == []  # no sentence long enough
    everything = central_passages(STORY, tok, 10_000)
    assert everything == [s for s in sentences if s in everything] and len(everything) == len(sentences)
    for budget in (20, 40, 80):
        picked = central_passages(STORY, tok, budget)
        assert sum(len(tok.encode("\n" + p)) for p in picked) <= budget
        assert picked == [s for s in sentences if s in picked]  # whole sentences, reading order
    one = central_passages(STORY, tok, 30)
    assert len(one) == 1 and "Mara" in one[0] and "Bread" not in one[0]  # the hub, not the bread


def test_infini_summary_is_written_after_the_evidence(loaded, tiny_model_dir: Path) -> None:
    memory = MemoryConfig(segment_len=32)
    cfg = SummarizeConfig(model=str(tiny_model_dir), words=6, memory=memory, evidence_tokens=40, cast=2)
    result = summarize(BOOK, cfg, model=loaded)
    assert (result.to_dict()["evidence_tokens"], result.to_dict()["cast"]) == (40, 2)
    # the same generation by hand: the book streamed, then passages, names and instruction
    tok = loaded.tokenizer
    reader = InfiniReader(convert(loaded.model, memory))
    state = reader.read(book_tokens(tok, BOOK)[0])
    names = characters(c.text for c in BOOK.chapters)[:2]
    assert names == ["Mara", "Osric"]
    ask = summary_ask(INSTRUCTION.format(words=6), central_passages(BOOK.text, tok, 40), names)
    budget = max_new_tokens(6)
    gen = replace(cfg.generation, max_new_tokens=budget, min_new_tokens=min_new_tokens(budget))
    out = reader.generate(state, chat_prompt(tok, ask).closing, gen, tok.eos_ids)
    assert tok.decode(out, skip_special=True).strip().startswith(result.summary)
    plain = summarize(BOOK, replace(cfg, evidence_tokens=0, cast=0), model=loaded)
    assert plain.to_dict()["evidence_tokens"] == 0


def test_extractive_strategies_record_no_evidence() -> None:
    result = summarize(BOOK, SummarizeConfig(strategy="lead", words=5, evidence_tokens=64, cast=3))
    assert (result.evidence_tokens, result.cast) == (0, 0)


def test_negative_evidence_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^--evidence-tokens -1 is negative: use 0 \(none\) or more$"):
        SummarizeConfig(evidence_tokens=-1)
    with pytest.raises(ConfigError, match=r"^--cast -2 is negative"):
        SummarizeConfig(cast=-2)


def test_name_tokens_cover_a_name_mid_sentence_and_at_a_line_start(loaded) -> None:
    from infsum.evidence import name_tokens

    tok = loaded.tokenizer
    forms = [" Kayle", "Kayle", " Nagurski", "Nagurski"]
    assert name_tokens(tok, ["Kayle", "Nagurski"]) == [tuple(tok.encode(f)) for f in forms]
    assert name_tokens(tok, []) == []
