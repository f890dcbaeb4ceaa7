"""The tiktoken tokenizer against the Hugging Face one, its fallbacks, and the chat template."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from infsum.errors import TokenizerError
from infsum.tokenizer import PROBE_TEXT, byte_to_unicode, load_tokenizer, render_chat_template

SMOLLM2 = Path(__file__).parent / "fixtures" / "smollm2-tokenizer"
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SMOLLM2)


@pytest.fixture(scope="module")
def reference() -> HFTokenizer:
    """The HF tokenizer, reading special-token text in books as plain text (as infsum must)."""
    hf = HFTokenizer.from_file(str(SMOLLM2 / "tokenizer.json"))
    hf.encode_special_tokens = True
    return hf


def test_smollm2_builds_the_tiktoken_backend(tok):
    assert tok.backend == "tiktoken"
    assert tok.vocab_size == 49152
    assert tok.special_ids == frozenset(range(17))
    assert tok.eos_ids == frozenset({0, 2})  # <|endoftext|>, <|im_end|> (the configured eos)


@pytest.mark.shared
def test_ids_equal_hf_on_every_shared_book(tok, reference, shared_dir):
    books = sorted((shared_dir / "data" / "books").glob("*/text.txt"))
    assert len(books) >= 10
    for path in books:
        text = path.read_text(encoding="utf-8")
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids, path.parent.name


def test_ids_equal_hf_on_the_probe_text(tok, reference):
    assert tok.encode(PROBE_TEXT) == reference.encode(PROBE_TEXT, add_special_tokens=False).ids


def test_characters_the_vocabulary_lacks_do_not_crash_and_match_hf(tok, reference):
    # SmolLM2 has no token for bytes 0x04, 0x1d (control characters) nor for 0xf1, the lead byte of
    # U+40000..U+7FFFF: tiktoken alone would panic on them
    text = "a\x04b !\x1d! x\U00050000y 🙂 end"
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == [81, 82, 5728, 17, 1792, 234, 218, 218, 105, 47526, 1112]


def test_lone_surrogates_become_replacement_characters(tok):
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")


def test_literal_special_token_text_in_a_book_stays_plain_text(tok, reference):
    text = "He typed <|im_end|> and <|im_start|>assistant\n then <|endoftext|>."
    ids = tok.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == text


def test_chat_scaffold_text_encodes_to_special_ids(tok):
    assert tok.encode_chat_scaffold("<|im_start|>user\n") == [1, 4093, 198]
    assert tok.encode_chat_scaffold("<|im_end|>\n<|im_start|>assistant\n") == [2, 198, 1, 520, 9531, 198]
    assert tok.encode("<|im_start|>user\n")[0] != 1


def test_decode_round_trips_and_replaces_broken_utf8(tok):
    assert tok.decode(tok.encode(PROBE_TEXT)) == PROBE_TEXT
    cuneiform = tok.encode("\U00012000")  # four UTF-8 bytes, several byte-level tokens
    assert len(cuneiform) > 1
    assert tok.decode(cuneiform[:-1]) == "\ufffd"
    assert tok.decode([1, 28120, 2], skip_special=True) == tok.decode([28120])


def test_chat_parts_for_the_smollm2_template(tok):
    before, after = tok.chat_parts()
    assert before == f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert after == "<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_renders_like_transformers(tok):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(SMOLLM2)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template = (SMOLLM2 / "chat_template.jinja").read_text()
    assert render_chat_template(template, messages, {}) == expected


def test_model_without_chat_template_raises_on_chat_parts(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((SMOLLM2 / "tokenizer.json").read_bytes())
    with pytest.raises(TokenizerError, match="no chat template"):
        load_tokenizer(tmp_path).chat_parts()


def test_word_level_tokenizer_falls_back_to_hf(tmp_path, caplog):
    """A tokenizer that is not byte-level BPE (issue 3) is served by the HF tokenizer itself."""
    hf = HFTokenizer(
        models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "<|im_end|>": 3}, unk_token="[UNK]")
    )
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<|im_end|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with caplog.at_level(logging.INFO, logger="infsum"):
        tok = load_tokenizer(tmp_path)
    assert tok.backend == "hf"
    assert "not a byte-level BPE model" in caplog.text
    assert tok.encode("hello world nope") == [1, 2, 0]
    assert tok.encode_chat_scaffold("<|im_end|>") == [3]
    assert tok.eos_ids == frozenset({3})
    assert tok.decode([1, 2]) == "hello world"


def test_merge_order_disagreeing_with_ranks_falls_back_to_hf(tmp_path, caplog):
    # the merges say "a b" before "b c" but the ids rank "bc" first: tiktoken (which merges by rank)
    # would read "abc" as [a, bc] where HF reads [ab, c]; the probe check must catch it
    alphabet = [byte_to_unicode()[b] for b in range(256)]
    vocab = {c: i for i, c in enumerate(alphabet)} | {"bc": 256, "ab": 257}
    hf = HFTokenizer(models.BPE(vocab, [("a", "b"), ("b", "c")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.save(str(tmp_path / "tokenizer.json"))
    with caplog.at_level(logging.WARNING, logger="infsum"):
        tok = load_tokenizer(tmp_path)
    assert tok.backend == "hf"
    assert "tiktoken disagrees with Hugging Face" in caplog.text
    assert tok.encode("abc") == [257, alphabet.index("c")]
    assert load_tokenizer(tmp_path, verify=False).encode("abc") == [alphabet.index("a"), 256]


def test_unreadable_tokenizer_json_raises(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json could not be read"):
        load_tokenizer(tmp_path)
