"""Plain text (.txt, .md): encoding detection, Project Gutenberg header/footer, chapter headings."""

from __future__ import annotations

import codecs
import logging
import re
from pathlib import Path

from ..errors import CorruptDocumentError
from ._book import Book, Chapter, clean_line, join_paragraphs
from ._headings import is_bare, is_caps_heading, is_group, is_heading, is_subtitle
from ._safety import check_size

log = logging.getLogger("infsum")

_PG_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*END\*?\s*THE SMALL PRINT.*$", re.I | re.M
)
_PG_END = re.compile(
    r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$"
    r"|^\s*End of (?:the )?Project Gutenberg['\u2019]?s? .*$",
    re.I | re.M,
)
_PG_FIELD = re.compile(r"^(Title|Author|Language):\s*(.+)$", re.M)
_CREDITS = re.compile(r"^(?:Produced by|E-text prepared by|Transcribed from|This e-?book was produced)", re.I)
_ILLUSTRATION = re.compile(r"^\[Illustration[^\]]*\]$", re.I)
_MD_HEADING = re.compile(r"^#{1,3}\s+(.+?)\s*#*$")
_BY_LINE = re.compile(r"^by\s+(.+)$", re.I)
_TITLE_BY = re.compile(r"^(.{3,80}?),?\s+by\s+([A-Z].{2,60})$")
LANGUAGES = {
    "english": "en",
    "french": "fr",
    "german": "de",
    "spanish": "es",
    "italian": "it",
    "dutch": "nl",
    "portuguese": "pt",
    "latin": "la",
    "finnish": "fi",
    "swedish": "sv",
}


def _utf16_without_bom(raw: bytes) -> str | None:
    """ "utf-16-le" or "utf-16-be" when the first 4 KB look like UTF-16 text without a BOM (mostly
    ASCII: nearly every byte at odd positions, or at even ones, is NUL and the others are not)."""
    head = raw[:4096]
    even, odd = head[0::2], head[1::2]
    if len(odd) < 8:
        return None
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) <= 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) <= 0.1 * len(odd):
        return "utf-16-be"
    return None


def decode(raw: bytes, path: Path) -> str:
    """Decode bytes: UTF-8 (with or without BOM), UTF-16 (with a BOM, or mostly-ASCII text without
    one), else Windows-1252. A NUL byte anywhere else means binary data: ``CorruptDocumentError``."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")  # the codec reads and drops the BOM
    elif (utf16 := _utf16_without_bom(raw)) is not None:
        log.info("%s: no byte-order mark, read as %s", path, utf16)
        return raw.decode(utf16, errors="replace")
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        raise CorruptDocumentError(
            f"{path}: binary data (a NUL byte at offset {at:,}), not text; give a text-encoded .txt file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.info("%s: not UTF-8, read as Windows-1252", path)
        return raw.decode("cp1252", errors="replace")


def strip_gutenberg(text: str) -> tuple[str, dict[str, str]]:
    """Cut Project Gutenberg's header and licence footer; return the body and the header fields."""
    fields: dict[str, str] = {}
    start = _PG_START.search(text)
    if start:
        fields = {k.lower(): v.strip() for k, v in _PG_FIELD.findall(text[: start.start()])}
        wrapped = start.group(0).count("*") < 6  # the marker's closing *** is on the next line
        text = text[start.end() :]
        if wrapped:
            text = re.sub(r"^\n?[^\n]*\*(?:\*\*|END\*)[ \t]*(?=\n|$)", "", text, count=1)
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text, fields


def _blocks(text: str) -> list[list[str]]:
    """Blank-line separated blocks, each a list of cleaned non-empty lines."""
    out = []
    for block in re.split(r"\n[ \t\u00a0]*\n", text):
        lines = [clean_line(x) for x in block.split("\n")]
        lines = [x for x in lines if x]
        if lines:
            out.append(lines)
    return out


def _heading_of(block: list[str], *, markdown: bool, caps: bool) -> str | None:
    """The heading text when this block is a heading, else None."""
    if markdown and len(block) == 1 and (m := _MD_HEADING.match(block[0])):
        return m.group(1)
    if len(block) > 2:
        return None
    if is_heading(block[0]) or caps and is_caps_heading(block[0]):
        if len(block) == 1:
            return block[0]
        return _join_title(block[0], block[1]) if is_subtitle(block[1]) else None
    return None


def _join_title(head: str, subtitle: str) -> str:
    """ "CHAPTER IV" + "WHAT THE NURSE THOUGHT" -> "CHAPTER IV. WHAT THE NURSE THOUGHT"."""
    return f"{head}{'' if head.endswith(('.', ':')) else '.'} {subtitle}"


def split_chapters(
    blocks: list[list[str]], *, book_title: str | None, markdown: bool = False, caps: bool = True
) -> list[Chapter]:
    """Cut blocks into chapters at heading blocks; a bare heading absorbs a subtitle line after it.

    ``caps`` allows headings in capitals ("THE FERRYMAN") when no numbered ones are found.
    Headings with no text before the next heading are dropped, except that a book or part heading
    prefixes the next chapter's title. Text before the first heading is kept as an opening chapter
    when it is long enough to be more than a title page (``MIN_OPENING_WORDS``).
    """
    numbered = [h for b in blocks if (h := _heading_of(b, markdown=markdown, caps=False))]
    # no numbered chapters: try short lines in capitals as headings (where the caller allows)
    caps = caps and sum(not is_group(h) for h in numbered) < 2
    chapters: list[Chapter] = []
    title: str | None = None
    group = ""
    paras: list[str] = []

    def flush() -> None:
        nonlocal group
        text = join_paragraphs(paras)
        if title is None:
            if len(text.split()) >= MIN_OPENING_WORDS or not chapters and not heads:
                chapters.append(Chapter(book_title or "Opening", text))
        elif text:
            chapters.append(Chapter(f"{group}: {title}" if group else title, text))
            group = ""
        elif is_group(title):
            group = title

    heads = [i for i, b in enumerate(blocks) if _heading_of(b, markdown=markdown, caps=caps)]
    i = 0
    while i < len(blocks):
        head = _heading_of(blocks[i], markdown=markdown, caps=caps)
        if head and book_title and head.lower() == book_title.lower():
            head = None  # the book's own title repeated above the text
        if head and title and head.casefold() == title.casefold():
            i += 1  # the chapter's title again (a running head in a PDF)
            continue
        if head:
            flush()
            title, paras = head, []
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            if is_bare(head) and nxt and len(nxt) == 1 and is_subtitle(nxt[0]):
                title, i = _join_title(head, nxt[0]), i + 1
        elif not _ILLUSTRATION.match(" ".join(blocks[i])):
            paras.append(" ".join(blocks[i]))
        i += 1
    flush()
    return chapters


MIN_OPENING_WORDS = 150  # shorter text before the first heading is a title page or contents list


def front_matter(blocks: list[list[str]], fields: dict[str, str]) -> tuple[str | None, str | None, int]:
    """Title, author and the number of leading blocks they took (Gutenberg fields win)."""
    title, author = fields.get("title"), fields.get("author")
    start = 0
    while start < len(blocks) and _CREDITS.match(blocks[start][0]):
        start += 1  # "Produced by ..." credits
    if title or start >= len(blocks):
        return title, author, start
    first = blocks[start]
    if (
        len(first) == 1
        and start + 1 < len(blocks)  # a lone line is the text, not a title
        and len(first[0].split()) <= 12
        and not first[0].endswith((".", ",", '"', "\u201d"))
        and not is_heading(first[0])
        and not first[0].startswith("#")  # a markdown heading opens a chapter
    ):
        title, start = first[0], start + 1
        if m := _TITLE_BY.match(title):  # "Pride and Prejudice by Jane Austen" on one line
            return m.group(1), author or m.group(2), start
        if start < len(blocks) and len(blocks[start]) == 1 and (m := _BY_LINE.match(blocks[start][0])):
            author, start = m.group(1), start + 1
    return title, author, start


def read_text(path: Path) -> Book:
    """Read a .txt or .md file into a Book (see the module docstring for what is recognised)."""
    check_size(path, "MAX_TEXT_MB")
    text = decode(path.read_bytes(), path).replace("\r\n", "\n").replace("\r", "\n")
    body, fields = strip_gutenberg(text)
    blocks = _blocks(body)
    title, author, start = front_matter(blocks, fields)
    markdown = path.suffix.lower() == ".md"
    chapters = split_chapters(blocks[start:], book_title=title or path.stem, markdown=markdown)
    language = fields.get("language")
    language = LANGUAGES.get(language.lower(), language) if language else None
    return Book(title or path.stem, author, language, tuple(chapters), str(path))
