"""The summary written in parts along the book (``SummarizeConfig.part_words``, ``--part-words``):
each part after its share of the book has streamed, beside the share's central passages; on the tiny
random model (the text is nonsense: the plumbing and the arithmetic are what is tested)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infsum.cli import app
from infsum.config import MemoryConfig, SummarizeConfig
from infsum.engine import InfiniReader, convert, load_state
from infsum.evidence import PART_EVIDENCE_TOKENS, book_evidence
from infsum.models import load_model
from infsum.names import characters
from infsum.pipeline import summarize
from infsum.prompt import PART_INSTRUCTION, book_tokens, trim_to_sentence
from infsum.readers import Book, Chapter
from infsum.strategies import MIN_PART_TOKENS, answer, summary_parts

runner = CliRunner()
SEG = 64
SENTENCES = (
    "The keeper of the northern light counted every ship that passed the rocks at night.",
    "Marta rowed out alone when the storm broke the mast of the grain boat from Lisbon.",
    "In the spring the harbour master came to ask why the lamp had gone dark twice.",
    "Nobody in the village believed the story of the ship that carried no name at all.",
)
BOOK = Book(
    "The Keeper",
    None,
    "en",
    tuple(Chapter(f"Part {i + 1}", " ".join(SENTENCES[(i + k) % 4] for k in range(12))) for i in range(4)),
    "keeper.txt",
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def config(tiny_model_dir: Path, **kw) -> SummarizeConfig:
    kw = {"words": 24, "part_words": 8, **kw}
    return SummarizeConfig(model=str(tiny_model_dir), memory=MemoryConfig(segment_len=SEG), **kw)


@pytest.mark.parametrize(
    ("words", "part_words", "tokens", "parts"),
    [
        (400, 70, 100_000, 6),  # about 70 words each
        (665, 70, 20_000, 10),
        (100, 70, 100_000, 1),  # less than one and a half parts: written whole
        (400, 0, 100_000, 1),  # 0: whole
        (400, 70, 3 * MIN_PART_TOKENS, 3),  # a short book: at most one part per MIN_PART_TOKENS
        (400, 70, MIN_PART_TOKENS - 1, 1),
    ],
)
def test_summary_parts(words: int, part_words: int, tokens: int, parts: int) -> None:
    assert summary_parts(words, part_words, tokens) == parts


def test_parts_are_written_after_their_shares_of_the_book(
    loaded, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = config(tiny_model_dir)
    tok = loaded.tokenizer
    ids, starts = book_tokens(tok, BOOK)
    assert len(ids) >= 3 * MIN_PART_TOKENS  # the book is long enough for three parts
    result = summarize(BOOK, cfg, model=loaded, state_path=tmp_path / "s.infsum")
    assert result.parts == 3 and result.to_dict()["parts"] == 3
    assert "written in 3 parts along the book" in result.markdown()
    # by hand: read a third, write a part from the state beside the third's own passages and names
    reader = InfiniReader(convert(loaded.model, cfg.memory))
    names = characters((c.text for c in BOOK.chapters), top=cfg.generation.spare_names)
    bounds = [round(i * len(ids) / 3) for i in range(4)]
    state, parts = None, []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        state = reader.read(ids[a:b], state)
        share = tok.decode(ids[max(a, starts[0][0]) : b], skip_special=True)
        budget = min(PART_EVIDENCE_TOKENS, SEG // 2)
        ask = book_evidence(tok, share, [share], evidence_tokens=budget, cast=cfg.cast).ask(
            PART_INSTRUCTION.format(words=8)
        )
        parts.append(trim_to_sentence(answer(reader, state, tok, ask, 8, cfg.generation, names=names)[0]))
    by_hand = trim_to_sentence("\n\n".join(parts))
    assert result.summary and by_hand.startswith(result.summary)  # the same parts, held to 24 words
    assert len(result.summary.split()) <= 24
    # the memory is the whole book's, read in one go: writing parts changed nothing in it
    whole = reader.read(ids)
    saved = load_state(tmp_path / "s.infsum")
    assert all((x - y).abs().max() == 0 for x, y in zip(saved.memory.M, whole.memory.M, strict=True))


def test_part_words_zero_writes_the_whole_summary_as_before(loaded, tiny_model_dir: Path) -> None:
    whole = summarize(BOOK, config(tiny_model_dir, part_words=0), model=loaded)
    short = summarize(BOOK, config(tiny_model_dir, part_words=100), model=loaded)  # one part: whole
    assert whole.parts == short.parts == 1 and whole.summary == short.summary
    assert "parts along the book" not in whole.markdown()


def test_instruction_and_saved_state_write_whole(loaded, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir)
    assert (
        summarize(BOOK, replace(cfg, instruction="List the ships in {words} words."), model=loaded).parts == 1
    )
    summarize(BOOK, cfg, model=loaded, state_path=tmp_path / "s.infsum")
    from_state = summarize(BOOK, cfg, model=loaded, from_state=tmp_path / "s.infsum")
    assert from_state.parts == 1
    assert from_state.summary == summarize(BOOK, replace(cfg, part_words=0), model=loaded).summary


def test_chapter_notes_are_the_same_with_parts(loaded, tiny_model_dir: Path) -> None:
    with_parts = summarize(BOOK, config(tiny_model_dir, chapter_words=4), model=loaded)
    alone = summarize(BOOK, config(tiny_model_dir, chapter_words=4, part_words=0), model=loaded)
    assert with_parts.parts == 3 and [c["note"] for c in with_parts.chapters] == [
        c["note"] for c in alone.chapters
    ]


def test_cli_part_words(tiny_model_dir: Path, tmp_path: Path) -> None:
    book = tmp_path / "keeper.txt"
    book.write_text("\n\n".join(c.text for c in BOOK.chapters), encoding="utf-8")
    base = [str(book), "--model", str(tiny_model_dir), "--segment-len", str(SEG), "--words", "24", "-q"]
    out = runner.invoke(app, [*base, "--part-words", "8", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["parts"] == 3
    out = runner.invoke(app, [*base, "--part-words", "0", "--json"])
    assert json.loads(out.stdout)["parts"] == 1
    bad = runner.invoke(app, [*base, "--part-words", "-1"])
    assert bad.exit_code == 2 and "--part-words" in bad.output
