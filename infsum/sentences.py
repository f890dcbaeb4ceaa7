"""Sentence boundaries: the one rule for where a sentence ends, shared by TextRank, ROUGE-Lsum and
the trimming of a summary cut off by its token budget."""

from __future__ import annotations

import re

# a sentence ends at . ! or ?, optionally followed by closing quotes or brackets, then whitespace,
# and the next word does not start in lower case (so '"Why?" said he.' stays one sentence); the
# end of the text ends a sentence too. ``(?![\sa-z])`` rather than ``(?![a-z])``: \s+ must not stop
# short of a lower-case word inside a run of whitespace
_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s+(?![\sa-z])|\s*$)")
_PARAGRAPH = re.compile(r"\n\s*\n")


def sentence_ends(text: str) -> list[int]:
    """Offsets in ``text`` just past every sentence end (its mark and any closing quotes or
    brackets), in order; text after the last one is an unfinished sentence."""
    return [m.end() for m in _END.finditer(text)]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` in order, each with its whitespace collapsed to single spaces; a blank
    line always ends a sentence (a paragraph without an end mark is one sentence)."""
    out = []
    for para in _PARAGRAPH.split(text):
        flat = " ".join(para.split())
        start = 0
        for end in [*sentence_ends(flat), len(flat)]:
            if sentence := flat[start:end].strip():
                out.append(sentence)
            start = end
    return out
