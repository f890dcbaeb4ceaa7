"""The one prompt layout: training, inference, the model strategies and passkey build the same user turn.

References are built by hand from the chat template and literal texts, so a change to the layout or
to an instruction fails here, not silently in a trained adapter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from infsum.config import GenerationConfig, MemoryConfig, SummarizeConfig, TrainConfig
from infsum.engine.stream import InfiniReader
from infsum.evidence import central_passages
from infsum.models import load_model
from infsum.passkey import ANSWER_PREFIX, ANSWER_SLACK, QUESTION, FillerSource, make_sample
from infsum.pipeline import summarize
from infsum.prompt import INSTRUCTION, chat_prompt, drop_length_talk, trim_to_sentence, trim_to_words
from infsum.readers import Book, Chapter
from infsum.sentences import sentence_ends, split_sentences
from infsum.strategies import WindowSummarizer
from infsum.training_data import IGNORE, DataMixture

torch.set_num_threads(2)

DOCUMENT = (
    "The keeper Osric counted every ship that passed the harbour at night.\n\n"
    "He wrote each name in the book that Ida kept for him. "
) * 3
SUMMARY = " ".join(["A keeper counts ships."] * 25)  # 100 words: training asks for about 100


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(str(tiny_model_dir), device="cpu")


def hand_built(tok, body: list[int], ask: str, answer_prefix: str = "") -> list[int]:
    """The user turn as the chat template spells it: opening, body, blank line and ask, closing."""
    before, after = tok.chat_parts()
    prefix = tok.encode(answer_prefix) if answer_prefix else []
    closing = tok.encode("\n\n" + ask) + tok.encode_chat_scaffold(after) + prefix
    return tok.encode_chat_scaffold(before) + body + closing


def test_training_summary_prompt_is_the_inference_prompt(
    loaded, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = loaded.tokenizer
    instruction = "Summarize the plot of the book above in about 100 words."
    # the ask after the book: its central passages (half a 64-token segment), its names, the instruction
    passages = central_passages(DOCUMENT, tok, 32)
    assert passages and all(p in DOCUMENT for p in passages)
    ask = (
        "Key passages from the book, in reading order:\n" + "\n".join(passages) + "\n\n"
        "The names the book mentions most: Osric and Ida.\n\n" + instruction
    )
    want = hand_built(tok, tok.encode(DOCUMENT), ask)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"document": DOCUMENT, "summary": SUMMARY}) + "\n", encoding="utf-8")
    data = DataMixture(tok, TrainConfig(summaries=(pairs,), mix=(0.0, 0.0, 1.0), segment_len=64))
    ex = data.example(512, random.Random(0))
    scored = next(i for i, label in enumerate(ex.labels) if label != IGNORE)
    assert ex.ids[:scored] == want  # the prompt part: everything before the first scored token
    assert tok.decode(ex.ids[scored:]).startswith(SUMMARY)

    # what the pipeline streams into memory, then the prompt it generates from
    seen: dict[str, list[int]] = {}
    read = InfiniReader.read

    def spy_read(self, ids, *args, **kwargs):
        seen["streamed"] = list(ids)
        return read(self, ids, *args, **kwargs)

    def spy_generate(self, state, prompt, *args, **kwargs):
        seen["prompt"] = list(prompt)
        return []  # the ids are what is checked: no need to generate

    monkeypatch.setattr(InfiniReader, "read", spy_read)
    monkeypatch.setattr(InfiniReader, "generate", spy_generate)
    book = Book("The Keeper", None, "en", (Chapter("One", DOCUMENT),), "keeper.txt")
    cfg = SummarizeConfig(model=str(tiny_model_dir), words=100, memory=MemoryConfig(segment_len=64))
    summarize(book, cfg, model=loaded)
    assert seen["streamed"] + seen["prompt"] == want
    assert seen["prompt"] == list(chat_prompt(tok, ask).closing)

    # truncate-head on a document that fits its window sends the same turn, with the instruction alone
    window = WindowSummarizer(loaded, GenerationConfig())
    plain = hand_built(tok, tok.encode(DOCUMENT), instruction)
    assert window.prompt_ids(tok.encode(DOCUMENT), INSTRUCTION.format(words=100)) == plain


def test_passkey_and_window_prompts_are_laid_out_by_one_function(loaded) -> None:
    tok = loaded.tokenizer
    piece = tok.encode(" The grass is green.")
    filler = FillerSource([piece], prose=False, name="one sentence")  # the filler is then fixed
    s = make_sample(tok, length=300, depth=0.0, rng=random.Random(0), filler=filler, key="12345")

    instruction = tok.encode(
        "There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about it.\n\n"
    )
    key_ids = tok.encode(" The pass key is 12345. Remember it. 12345 is the pass key.")
    empty = hand_built(tok, [], "What is the pass key?", "The pass key is")
    n_fill = 300 - len(empty) - len(instruction) - len(key_ids) - len(tok.encode(" 12345")) - ANSWER_SLACK
    body = instruction + key_ids + (piece * 300)[:n_fill]  # depth 0: the key opens the haystack
    want = hand_built(tok, body, "What is the pass key?", "The pass key is")
    assert list(s.ids) == want
    turn = chat_prompt(tok, QUESTION, answer_prefix=ANSWER_PREFIX)
    assert turn.around(body) == want and s.key_pos == len(turn.opening) + len(instruction)

    window = WindowSummarizer(loaded, GenerationConfig())
    text = tok.encode("A passage about ships.")
    assert window.prompt_ids(text, "Summarize now.") == hand_built(tok, text, "Summarize now.")
    assert window.prompt_ids(text, "Summarize now.") == chat_prompt(tok, "Summarize now.").around(text)
    assert list(chat_prompt(tok, "Summarize now.").opening) == list(turn.opening)


def test_trimming_and_splitting_share_one_sentence_rule() -> None:
    text = '"Why?" said he. He left (at once.) Then the'
    assert split_sentences(text) == ['"Why?" said he.', "He left (at once.)", "Then the"]
    assert sentence_ends(text) == [len('"Why?" said he.'), len('"Why?" said he. He left (at once.)')]
    assert trim_to_sentence(text) == '"Why?" said he. He left (at once.)'
    # a lower-case word after the mark continues the sentence: nothing was cut off
    assert split_sentences("The ship came. it sank and") == ["The ship came. it sank and"]
    assert trim_to_sentence("The ship came. it sank and") == "The ship came. it sank and"


def test_trim_to_words_cuts_at_a_sentence_end_within_the_budget() -> None:
    text = "The story is as follows:\n1. The story begins with Adam. He lives.\n\n2. Then Eve comes to it."
    assert trim_to_words(text, 20) == text  # within the budget: unchanged
    assert trim_to_words(text, 12) == "The story is as follows:\n1. The story begins with Adam."
    assert trim_to_words(text, 14) == "The story is as follows:\n1. The story begins with Adam. He lives."
    assert trim_to_words(text, 3) == "The story is as follows:"  # the first sentence, its list marker dropped
    assert trim_to_words("no sentence end at all here", 2) == "no sentence end at all here"


@pytest.mark.parametrize(
    ("answer", "cleaned"),
    [
        # a lead-in up to the comma or colon after the count goes; what follows stays, capitalised
        (
            "In the part of the book about 68 words, Retief is sent to Adobe. He goes.",
            "Retief is sent to Adobe. He goes.",
        ),
        (
            "The part of the book about 67 words is: anne meets Wentworth at Bath.",
            "Anne meets Wentworth at Bath.",
        ),
        # nothing (or numbers, or under three words) after the count: the sentence goes
        ("Anne walks. The book ends with a summary of the events in 67 words.", "Anne walks."),
        ("Anne walks. The story is told in 70 words: she sits.", "Anne walks."),
        ("In 76 words: 102945\n\nAnne walks.", "Anne walks."),
        (
            "Korvin waits. This summary, in 1,200 words, says little of it.",
            "Korvin waits. Says little of it.",
        ),
        # a line emptied goes with its line break; a paragraph emptied leaves one blank line
        ("Anne walks.\nIt is told in 65 words.\nShe sits.", "Anne walks.\nShe sits."),
        ("Anne walks.\n\nIt is told in 65 words.\n\nShe sits.", "Anne walks.\n\nShe sits."),
        # no count of words: exactly as it was, numbers and spacing included
        ("He had 3 sons.\n\n  Then  40 wordsmiths came. ", "He had 3 sons.\n\n  Then  40 wordsmiths came. "),
    ],
)
def test_drop_length_talk(answer: str, cleaned: str) -> None:
    assert drop_length_talk(answer) == cleaned
    assert drop_length_talk(cleaned) == cleaned  # applying it again changes nothing


@pytest.mark.parametrize(
    ("written", "words", "summary"),
    [
        # held to the words asked, at a sentence end; a last sentence cut off mid-way is dropped
        ("One two three. Four five six. Seven eight nine ten", 4, "One two three."),
        ("One two three. Four five six. Seven eight nine ten", 7, "One two three. Four five six."),
        # the answer's talk about its own length goes last
        (
            "The part of the book about 9 words is: one two three.\n\nThe story is told in 9 words.",
            30,
            "One two three.",
        ),
    ],
)
def test_pipeline_trims_a_model_summary(
    loaded, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, written: str, words: int, summary: str
) -> None:
    from dataclasses import replace as copy

    from infsum.strategies import STRATEGIES, Draft

    monkeypatch.setitem(STRATEGIES, "infini", copy(STRATEGIES["infini"], run=lambda job: Draft(written)))
    book = Book("The Keeper", None, "en", (Chapter("One", DOCUMENT),), "keeper.txt")
    cfg = SummarizeConfig(model=str(tiny_model_dir), words=words, memory=MemoryConfig(segment_len=64))
    assert summarize(book, cfg, model=loaded).summary == summary
