"""The model's tokenizer: a tiktoken encoding built from its tokenizer.json, checked against Hugging Face.

``load_tokenizer(model_dir)`` reads the model's byte-level BPE (vocabulary, pre-tokenizer regex,
added tokens) into a ``tiktoken.Encoding`` (several times faster than the Hugging Face tokenizer),
then checks it token for token against the Hugging Face tokenizer on a multilingual probe text. A
tokenizer tiktoken cannot express (not byte-level BPE, a normalizer, a mismatch) falls back to the
Hugging Face tokenizer, with a log line saying why. Book text never turns into special tokens:
``encode`` treats a literal ``<|im_end|>`` as plain text; only ``encode_chat_scaffold`` (for the chat
template's own text) produces special ids.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken
from tokenizers import Tokenizer as HFTokenizer

from infsum.errors import TokenizerError

log = logging.getLogger("infsum")

# the regex of tokenizers' ByteLevel pre-tokenizer with use_regex=True (GPT-2's pattern)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# checked token for token against the HF tokenizer when the tiktoken encoding is built
PROBE_TEXT = (
    "The quick brown fox — «naïve café» jumps over 13 lazy dogs; 1234567 + 3.14159 = ?\n\n"
    "  Ça va? Größe, Ærø, İstanbul, ŞEKER, ελληνικά, русский текст, עברית, العربية, हिन्दी.\n"
    "中文文本，日本語のテキスト、한국어 텍스트。 Emoji: 👍🏽 👨‍👩‍👧 🇫🇷 ✨\t\ttabs\r\nCRLF   \n\n\n"
    "def f(x):\n    return x**2  # comment\n\tif (a && b) { c[i] = 'it's'; }\n"
    "I'm, you're, we've, they'll, he'd, it's, DON'T, I'M.  Mixed123abc 0x1F 1,000,000.00\n"
    "Special text in a book: <|im_start|>user\nhi<|im_end|> <|endoftext|> </s> <s> [INST]\n"
    "   trailing spaces   \n \u00a0nbsp\u2009thin\u3000ideographic space \u200bzero-width"
)

# end-of-turn markers used by common chat models; those in the vocabulary join eos_ids
EOT_CANDIDATES = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
)

# stands in for the user's message while rendering the chat template; split on afterwards
SENTINEL = "INFSUM_USER_MESSAGE_7f3a"


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line, so that infsum's messages stay one line."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class Inexpressible(Exception):
    """The tokenizer.json describes something a tiktoken encoding cannot reproduce."""


class Tokenizer:
    """A model's tokenizer: tiktoken where it reproduces the HF tokenizer exactly, else HF itself."""

    def __init__(
        self,
        *,
        hf: HFTokenizer,
        encoding: tiktoken.Encoding | None,
        plain_specials: frozenset[str] = frozenset(),
        missing: re.Pattern[str] | None = None,
        normalizer: str | None = None,
        eos_ids: frozenset[int] = frozenset(),
        chat_template: str | None = None,
        template_vars: dict[str, str] | None = None,
    ) -> None:
        self._hf = hf
        self._encoding = encoding
        self._plain_specials = plain_specials  # non-special added tokens: HF splits them out of book text
        self._missing = missing  # characters whose bytes the vocabulary lacks: such text goes to HF
        self._normalizer = normalizer
        self._chat_template = chat_template
        self._template_vars = template_vars or {}
        self.eos_ids = eos_ids
        added = hf.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.backend = "tiktoken" if encoding is not None else "hf"

    def encode(self, text: str) -> list[int]:
        """Token ids of book text; literal special-token text (``<|im_end|>``) stays plain text."""
        text = _clean(text)
        ready = self._for_tiktoken(text)
        if ready is None:
            return self._hf_encode(text, specials=False)
        if not self._plain_specials:
            return self._encoding.encode_ordinary(ready)
        return self._encoding.encode(ready, allowed_special=self._plain_specials, disallowed_special=())

    def encode_chat_scaffold(self, text: str) -> list[int]:
        """Token ids of chat-template text, where ``<|im_start|>`` and the like become special ids."""
        text = _clean(text)
        ready = self._for_tiktoken(text)
        if ready is None:
            return self._hf_encode(text, specials=True)
        return self._encoding.encode(ready, allowed_special="all", disallowed_special=())

    def _for_tiktoken(self, text: str) -> str | None:
        """``text`` normalized for the tiktoken path, or None when the HF tokenizer must take it
        (no tiktoken encoding, or bytes the vocabulary lacks: tiktoken would panic)."""
        if self._encoding is None or (self._missing is not None and self._missing.search(text)):
            return None
        return unicodedata.normalize(self._normalizer, text) if self._normalizer else text

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (a split multi-byte character) becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        if self._encoding is not None:
            return self._encoding.decode(ids, errors="replace")
        return self._hf.decode(ids, skip_special_tokens=False)

    def chat_parts(self) -> tuple[str, str]:
        """The chat template rendered around one user message, with the assistant's turn opened:
        ``(text before the user's content, text after it up to the assistant's first token)``."""
        if self._chat_template is None:
            raise TokenizerError(
                "the model has no chat template (chat_template.jinja or tokenizer_config.json): "
                "use an instruct model"
            )
        messages = [{"role": "user", "content": SENTINEL}]
        rendered = render_chat_template(self._chat_template, messages, self._template_vars)
        if rendered.count(SENTINEL) != 1:
            raise TokenizerError(
                "the model's chat template does not place the user message exactly once: "
                "use a model with a standard chat template"
            )
        before, after = rendered.split(SENTINEL)
        return before, after

    def _hf_encode(self, text: str, *, specials: bool) -> list[int]:
        # encode_special_tokens=True makes HF treat special-token text as plain text, like tiktoken
        self._hf.encode_special_tokens = not specials
        return self._hf.encode(text, add_special_tokens=False).ids


def _clean(text: str) -> str:
    """``text`` as valid unicode: lone surrogates (which cannot be UTF-8 encoded) become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def render_chat_template(template: str, messages: list[dict[str, str]], variables: dict[str, str]) -> str:
    """Render a chat template the way transformers does: sandboxed jinja2, trimmed blocks."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, **variables)
    except TemplateError as e:
        raise TokenizerError(
            f"the model's chat template failed to render ({first_line(e)}): use a model with a "
            "standard chat template"
        ) from e


def load_tokenizer(model_dir: Path, *, verify: bool = True) -> Tokenizer:
    """The tokenizer of the model in ``model_dir``: tiktoken-backed when ``tokenizer.json`` is a
    byte-level BPE that tiktoken reproduces exactly on the probe text, else the HF tokenizer."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "tokenizer_config.json")
    hf, spec = _load_hf(model_dir)
    template_vars = {
        k: v
        for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        if (v := _token_text(config.get(k))) is not None
    }
    kwargs: dict[str, Any] = {
        "hf": hf,
        "eos_ids": _eos_ids(hf, config, model_dir),
        "chat_template": _chat_template(model_dir, config),
        "template_vars": template_vars,
    }
    try:
        encoding, plain, missing, normalizer = build_encoding(spec, name=model_dir.name)
    except Inexpressible as e:
        log.info("tokenizer of %s: using the Hugging Face tokenizer (%s)", model_dir, e)
        return Tokenizer(**kwargs, encoding=None)
    tok = Tokenizer(**kwargs, encoding=encoding, plain_specials=plain, missing=missing, normalizer=normalizer)
    if verify and (why := _mismatch(tok, hf)) is not None:
        log.warning(
            "tokenizer of %s: tiktoken disagrees with Hugging Face (%s); using the Hugging Face tokenizer",
            model_dir,
            why,
        )
        return Tokenizer(**kwargs, encoding=None)
    return tok


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(
            f"{path} is not valid JSON ({first_line(e)}): restore the model's tokenizer files"
        ) from e


def _load_hf(model_dir: Path) -> tuple[HFTokenizer, dict[str, Any]]:
    """The HF tokenizer and its JSON description, from tokenizer.json or, failing that, transformers."""
    path = model_dir / "tokenizer.json"
    if path.is_file():
        try:
            return HFTokenizer.from_file(str(path)), json.loads(path.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises plain Exception subclasses on bad files
            raise TokenizerError(
                f"{path} could not be read ({first_line(e)}): restore the model's tokenizer.json"
            ) from e
    try:
        from transformers import AutoTokenizer

        backend = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False).backend_tokenizer
    except Exception as e:  # transformers raises many types for a missing or odd tokenizer
        raise TokenizerError(
            f"no usable tokenizer in {model_dir} ({first_line(e)}): add the model's tokenizer.json"
        ) from e
    return backend, json.loads(backend.to_str())


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eos_ids(hf: HFTokenizer, config: dict[str, Any], model_dir: Path) -> frozenset[int]:
    """End-of-turn ids: the configured eos token, generation_config's eos ids, and known markers."""
    ids: set[int] = set()
    for text in (_token_text(config.get("eos_token")), *EOT_CANDIDATES):
        if text is not None and (i := hf.token_to_id(text)) is not None:
            ids.add(i)
    gen = _read_json(model_dir / "generation_config.json").get("eos_token_id")
    ids.update(gen if isinstance(gen, list) else [gen] if isinstance(gen, int) else [])
    return frozenset(ids)


def _chat_template(model_dir: Path, config: dict[str, Any]) -> str | None:
    path = model_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def build_encoding(
    spec: dict[str, Any], *, name: str
) -> tuple[tiktoken.Encoding, frozenset[str], re.Pattern[str] | None, str | None]:
    """A tiktoken encoding from a tokenizer.json description, with the non-special added tokens
    (matched in book text too), a pattern of characters the vocabulary cannot encode, and the
    unicode normalization form to apply first. Raises ``Inexpressible`` for anything else."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        raise Inexpressible("not a byte-level BPE model")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise Inexpressible("BPE with subword prefixes or suffixes")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise Inexpressible("the decoder is not ByteLevel")
    normalizer = _normalizer(spec.get("normalizer"))
    pattern = _pattern(spec.get("pre_tokenizer"))
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        raise Inexpressible("added tokens with lstrip/rstrip/single_word")
    specials = {t["content"]: t["id"] for t in added}
    ranks = _mergeable_ranks(model["vocab"], skip=specials)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    try:
        encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    except ValueError as e:  # a pre-tokenizer regex fancy-regex cannot compile, duplicate ranks
        raise Inexpressible(f"tiktoken refused it: {e}") from e
    plain = frozenset(t["content"] for t in added if not t.get("special"))
    return encoding, plain, _missing_pattern(missing), normalizer


def _normalizer(spec: dict[str, Any] | None) -> str | None:
    if spec is None:
        return None
    if spec.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        return spec["type"]
    raise Inexpressible(f"normalizer {spec.get('type')}")


def _pattern(spec: dict[str, Any] | None) -> str:
    """The pre-tokenizer's splitting regex: ByteLevel's own, or a Split before a regex-less ByteLevel."""
    spec = spec or {}
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else [spec]
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        raise Inexpressible("the pre-tokenizer does not end in ByteLevel without a prefix space")
    if len(steps) == 1 and steps[0].get("use_regex", True):
        return GPT2_PATTERN
    split = steps[0]
    if (
        len(steps) == 2
        and not steps[1].get("use_regex", True)
        and split.get("type") == "Split"
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and "Regex" in split.get("pattern", {})
    ):
        return split["pattern"]["Regex"]
    raise Inexpressible(f"pre-tokenizer {json.dumps(spec)[:120]}")


def _mergeable_ranks(vocab: dict[str, int], *, skip: dict[str, int]) -> dict[bytes, int]:
    """Vocabulary strings (bytes spelled with GPT-2's byte-to-unicode table) as tiktoken ranks."""
    decode = {c: b for b, c in byte_to_unicode().items()}
    ranks = {}
    for token, rank in vocab.items():
        if skip.get(token) == rank:
            continue  # added tokens are tiktoken special tokens; a duplicate rank would be refused
        try:
            ranks[bytes(decode[c] for c in token)] = rank
        except KeyError:
            continue  # not spelled in the byte alphabet: BPE over bytes can never produce it
    return ranks


def _missing_pattern(missing: list[int]) -> re.Pattern[str] | None:
    """Characters whose UTF-8 bytes include one without a rank (tiktoken would panic on them).

    A byte < 0x80 is the character itself; a lead byte 0xC2-0xF4 starts a range of code points;
    0x80-0xBF continuation bytes are (conservatively) every non-ASCII character.
    """
    classes = []
    for b in missing:
        if b < 0x80:
            classes.append(re.escape(chr(b)))
        elif b < 0xC0:
            return re.compile(r"[^\x00-\x7f]")
        elif 0xC2 <= b <= 0xF4:
            lo = (b & 0x1F) << 6 if b < 0xE0 else (b & 0x0F) << 12 if b < 0xF0 else (b & 0x07) << 18
            width = 1 << 6 if b < 0xE0 else 1 << 12 if b < 0xF0 else 1 << 18
            first = max(lo, 0x80 if b < 0xE0 else 0x800 if b < 0xF0 else 0x10000)  # shortest form only
            classes.append(f"{re.escape(chr(first))}-{re.escape(chr(min(lo + width - 1, 0x10FFFF)))}")
        # 0xC0, 0xC1, 0xF5-0xFF never occur in valid UTF-8
    return re.compile(f"[{''.join(classes)}]") if classes else None


def _mismatch(tok: Tokenizer, hf: HFTokenizer) -> str | None:
    """Why tiktoken and HF disagree on the probe text (book and scaffold modes), or None."""
    for mode, ours, specials in (("text", tok.encode, False), ("scaffold", tok.encode_chat_scaffold, True)):
        mine, theirs = ours(PROBE_TEXT), tok._hf_encode(PROBE_TEXT, specials=specials)
        if mine != theirs:
            at = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            return f"{mode} probe differs at token {at}: {mine[at : at + 4]} vs {theirs[at : at + 4]}"
    if tok.decode(tok.encode(PROBE_TEXT)) != PROBE_TEXT:
        return "probe text does not decode back to itself"
    return None
