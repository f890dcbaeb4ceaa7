"""Training data for ``infsum train``: a mixture of language modelling on books, passkey samples and
document/summary pairs, each example exactly as long as a training sample, with IGNORE labels where
a token is not scored."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infsum.config import TrainConfig
from infsum.errors import ConfigError, EmptyDocumentError
from infsum.evidence import book_ask, evidence_budget
from infsum.passkey import FillerSource, make_sample, read_prose
from infsum.prompt import INSTRUCTION, chat_prompt
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
        # a summary pair's document, encoded once and cut to the longest sample of the run: a novel
        # re-encoded on every draw would cost more than the training step on a GPU
        self._doc_ids: dict[str, tuple[list[int], bool]] = {}  # ids, and whether they are all of it
        self._asks: dict[tuple[str, int], str] = {}  # (document, words) -> its summary ask
        self._doc_keep = cfg.segment_len * max(hi for _, hi in (cfg.segments, *cfg.curriculum))
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
        turn = chat_prompt(self.tok, self._ask(document, words))  # the prompt `infsum` sends
        answer = self.tok.encode(summary.strip()) + self.end_of_turn
        room = length - len(turn.opening) - len(turn.closing) - min(len(answer), length // 4)
        doc = self._document(document, room)[: max(0, room)]  # a long story is cut: its beginning is kept
        prompt = turn.around(doc)
        ids = (prompt + answer)[:length]
        return self._pad(ids, [IGNORE] * len(prompt) + ids[len(prompt) :], "summary", length)

    def _ask(self, document: str, words: int) -> str:
        """The summary ask of ``infsum BOOK`` for ``document`` (``evidence.book_ask``, the evidence
        capped by ``evidence_budget`` as at inference), made once per document and length."""
        key = (document, words)
        if key not in self._asks:
            self._asks[key] = book_ask(
                self.tok,
                document,
                [document],
                INSTRUCTION.format(words=words),
                evidence_tokens=evidence_budget(self.cfg.evidence_tokens, self.cfg.segment_len),
                cast=self.cfg.cast,
            )
        return self._asks[key]

    def _document(self, document: str, room: int) -> list[int]:
        """The ids of ``document``, at least its first ``room`` (all of it when shorter), encoded once."""
        ids, complete = self._doc_ids.get(document, ([], False))
        if len(ids) < room and not complete:
            full = self.tok.encode(document)
            keep = max(self._doc_keep, room)
            ids, complete = full[:keep], len(full) <= keep
            self._doc_ids[document] = (ids, complete)
        return ids

    def _pad(self, ids: list[int], labels: list[int], kind: str, length: int) -> Example:
        n = length - len(ids)  # right padding is never attended to by the scored tokens before it
        return Example(ids + [self.pad] * n, labels + [IGNORE] * n, kind)

    def _book(self, path: Path) -> list[int]:
        if path not in self._book_ids:
            self._book_ids[path] = self.tok.encode(" ".join(read_prose(path).split()))
        return self._book_ids[path]


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
