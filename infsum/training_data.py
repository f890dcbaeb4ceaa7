"""Training data for ``infsum train``: a mixture of language modelling on books, passkey samples and
document/summary pairs, each example exactly as long as a training sample, with IGNORE labels where
a token is not scored.

A summary example is laid out as ``infsum BOOK`` asks for a summary, so that a trained adapter and
the inference options add up: with ``TrainConfig.part_words`` (the default, as at inference) a pair
whose summary ``infsum`` would write in parts (``strategies.summary_parts``) gives part examples
too: the document up to the end of one of its equal shares, ``evidence.part_evidence`` of that
share with its ``part_ask``, and as the answer the reference's sentences that
``coverage.PassageIndex`` places in that share (a sentence it cannot place goes with the one
before it). Part k of n, or the whole summary, is drawn
uniformly (n + 1 choices), a part only among those that get a sentence.
"""

from __future__ import annotations

import json
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infsum.config import TrainConfig
from infsum.coverage import PassageIndex
from infsum.errors import ConfigError, EmptyDocumentError
from infsum.evidence import Evidence, book_evidence, evidence_budget, part_evidence
from infsum.passkey import FillerSource, make_sample, read_prose
from infsum.prompt import INSTRUCTION, chat_prompt
from infsum.sentences import split_sentences
from infsum.strategies import share_bounds, summary_parts
from infsum.tokenizer import Tokenizer

IGNORE = -100  # label of a token that is not scored


@dataclass(frozen=True)
class Example:
    """One training sample: ``ids`` and ``labels`` (IGNORE where unscored), both ``length`` long."""

    ids: list[int]
    labels: list[int]
    kind: str


class DataMixture:
    """Draws language-modelling, passkey and summary examples of a given length, in ``mix`` proportions."""

    def __init__(self, tokenizer: Tokenizer, cfg: TrainConfig) -> None:
        self.tok = tokenizer
        self.cfg = cfg
        self.books = corpus_files(cfg.corpus, cfg.exclude)
        self._book_ids: dict[Path, list[int]] = {}  # encoded on first use
        # a summary pair's document, encoded once (a novel re-encoded on every draw would cost more
        # than the training step on a GPU), as 4-byte ids: 80 novels take about 40 MB
        self._doc_ids: dict[str, array] = {}
        # the evidence of a document or of one share (its token span), made once: the pair's
        # summary length only changes the instruction
        self._evidence: dict[tuple[str, int, int], Evidence] = {}
        self._targets: dict[tuple[str, str, int], list[str]] = {}  # (document, summary, parts) -> parts' text
        self._index: dict[str, PassageIndex] = {}  # a document's passages, for placing its summaries
        self.pairs = [p for path in cfg.summaries for p in read_pairs(path)]
        lm, pk, sm = cfg.mix
        if not self.books:
            lm = 0.0
        if not self.pairs:
            sm = 0.0
        if lm + pk + sm <= 0:
            raise ConfigError(
                "the training mix is empty: give --corpus books, --summaries pairs or a passkey share"
            )
        self.weights = (lm, pk, sm)
        self.filler = FillerSource.builtin(tokenizer)
        closing = tokenizer.encode_chat_scaffold(tokenizer.chat_parts()[1])[:1]  # "<|im_end|>" ends a turn
        eos = sorted(tokenizer.eos_ids)[:1]
        self.end_of_turn = closing if closing and closing[0] in tokenizer.eos_ids else eos
        self.pad = self.end_of_turn[0] if self.end_of_turn else 0

    def example(self, length: int, rng: random.Random) -> Example:
        """One example of exactly ``length`` tokens, its kind drawn from the mix."""
        kind = rng.choices(("lm", "passkey", "summary"), weights=self.weights)[0]
        return getattr(self, f"_{kind}")(length, rng)

    def _lm(self, length: int, rng: random.Random) -> Example:
        ids = self._book(rng.choice(self.books))
        start = rng.randrange(max(1, len(ids) - length))
        window = ids[start : start + length]
        return self._pad(window, list(window), "lm", length)

    def _passkey(self, length: int, rng: random.Random) -> Example:
        # the key anywhere before the last segment; question and answer in the last one
        end = None if self.cfg.passkey_anywhere else length - self.cfg.segment_len
        filler = self.filler
        if self.books and rng.random() < 0.5:  # half the haystacks are book prose
            filler = FillerSource([self._book(rng.choice(self.books))], prose=True, name="corpus")
        s = make_sample(self.tok, length=length, depth=rng.random(), rng=rng, filler=filler, key_end=end)
        answer = list(s.answer_ids) + self.tok.encode(".")
        ids = list(s.ids) + answer
        return self._pad(ids, [IGNORE] * len(s.ids) + answer, "passkey", length)

    def _summary(self, length: int, rng: random.Random) -> Example:
        document, summary = rng.choice(self.pairs)
        words = max(50, round(len(summary.split()) / 50) * 50)
        ids = self._document(document)
        parts = summary_parts(words, self.cfg.part_words, len(ids))
        targets = self._part_targets(document, summary, parts) if parts > 1 else []
        choice = rng.choice([k for k, t in enumerate(targets) if t] + [parts])  # parts: the whole
        whole = choice == parts
        target = summary if whole else targets[choice]
        if whole:
            ask = self._ask(document, words)
        else:
            start, end = share_bounds(len(ids), parts)[choice : choice + 2]
            ask = self._part_ask(document, ids, start, end, len(target.split()))
        turn = chat_prompt(self.tok, ask)  # the prompt `infsum` sends
        answer = self.tok.encode(target.strip()) + self.end_of_turn
        room = max(0, length - len(turn.opening) - len(turn.closing) - min(len(answer), length // 4))
        # the whole summary: a long story is cut, its beginning kept; a part: the share's end and what
        # precedes it (what the memory holds there at inference)
        body = ids[:room] if whole else ids[max(0, end - room) : end]
        prompt = turn.around(body.tolist())
        example = (prompt + answer)[:length]
        return self._pad(example, [IGNORE] * len(prompt) + example[len(prompt) :], "summary", length)

    def _ask(self, document: str, words: int) -> str:
        """The summary ask of ``infsum BOOK`` for ``document`` (``evidence.book_evidence``, capped by
        ``evidence_budget`` as at inference, then the instruction for ``words`` words)."""
        key = (document, 0, -1)  # no share ends at -1: the whole document's evidence
        if key not in self._evidence:
            self._evidence[key] = book_evidence(
                self.tok,
                document,
                [document],
                evidence_tokens=evidence_budget(self.cfg.evidence_tokens, self.cfg.segment_len),
                cast=self.cfg.cast,
            )
        return self._evidence[key].ask(INSTRUCTION.format(words=words))

    def _part_ask(self, document: str, ids: array, start: int, end: int, target_words: int) -> str:
        """The ask after the share ``ids[start:end]`` of ``document`` (``evidence.part_evidence`` of
        its text) for a part of ``target_words`` words, rounded to 10 (at least 10)."""
        key = (document, start, end)
        if key not in self._evidence:
            self._evidence[key] = part_evidence(
                self.tok,
                self.tok.decode(ids[start:end].tolist()),
                evidence_tokens=self.cfg.evidence_tokens,
                cast=self.cfg.cast,
                segment_len=self.cfg.segment_len,
            )
        return self._evidence[key].part_ask(max(10, round(target_words / 10) * 10))

    def _part_targets(self, document: str, summary: str, parts: int) -> list[str]:
        """``summary``'s sentences grouped by the share of ``document`` (one of ``parts`` equal
        ones) where ``coverage.PassageIndex`` places them, in the summary's order; a sentence it
        cannot place goes with the one before it (the first ones with the first placed one)."""
        key = (document, summary, parts)
        if key not in self._targets:
            if document not in self._index:
                self._index[document] = PassageIndex(document)
            self._targets[key] = part_targets(self._index[document], summary, parts)
        return self._targets[key]

    def _document(self, document: str) -> array:
        """The ids of ``document``, encoded once."""
        if document not in self._doc_ids:
            self._doc_ids[document] = array("i", self.tok.encode(document))
        return self._doc_ids[document]

    def _pad(self, ids: list[int], labels: list[int], kind: str, length: int) -> Example:
        n = length - len(ids)  # right padding is never attended to by the scored tokens before it
        return Example(ids + [self.pad] * n, labels + [IGNORE] * n, kind)

    def _book(self, path: Path) -> list[int]:
        if path not in self._book_ids:
            self._book_ids[path] = self.tok.encode(" ".join(read_prose(path).split()))
        return self._book_ids[path]


def part_targets(index: PassageIndex, summary: str, parts: int) -> list[str]:
    """The sentences of ``summary`` grouped into ``parts`` by where ``index`` (its document's
    passages) places them: part k holds those placed in [k/parts, (k+1)/parts) of the document, in
    the summary's order, joined by spaces; an unplaced sentence goes with the sentence before it,
    unplaced first sentences with the first placed one (all of them in part 0 when none is placed)."""
    sentences = split_sentences(summary)
    places = [index.match(s).position for s in sentences]
    first = next((min(int(p * parts), parts - 1) for p in places if p is not None), 0)
    out: list[list[str]] = [[] for _ in range(parts)]
    part = first
    for sentence, position in zip(sentences, places, strict=True):
        if position is not None:
            part = min(int(position * parts), parts - 1)
        out[part].append(sentence)
    return [" ".join(p) for p in out]


def corpus_files(paths: Sequence[Path], exclude: Sequence[str] = ()) -> list[Path]:
    """Text files given directly, plus ``*.txt``/``*.txt.gz`` inside given directories, minus ``exclude``."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted([*p.glob("*.txt.gz"), *p.glob("*.txt")])
        elif p.is_file():
            found.append(p)
        else:
            raise ConfigError(f"corpus path {p} does not exist: pass book files or a directory of them")
    return [p for p in found if p.name not in set(exclude)]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(document, summary) pairs from a jsonl file: ``{document, summary}`` records, or SQuALITY
    records (``document`` and every ``questions[0].responses[j].response_text``)."""
    pairs: list[tuple[str, str]] = []
    try:
        lines = read_prose(Path(path)).splitlines()  # gunzipped when the name ends in .gz
        for line in filter(str.strip, lines):
            rec = json.loads(line)
            if "summary" in rec:
                pairs.append((rec["document"], rec["summary"]))
            else:
                pairs += [(rec["document"], r["response_text"]) for r in rec["questions"][0]["responses"]]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise EmptyDocumentError(
            f"summary pairs {path} could not be read ({e}): give jsonl with "
            "document and summary fields, or SQuALITY records"
        ) from e
    if not pairs:
        raise EmptyDocumentError(f"summary pairs {path} holds no records: give a non-empty jsonl file")
    return pairs
