"""PDF via pypdf: text layer into paragraphs, page furniture dropped, hyphenation undone, chapters.

Each page is read with pypdf's plain extraction; a page whose lines are short enough to be columns
is read again in layout mode and, when a blank gutter runs down it, read column by column. Lines
repeated at the top or bottom of many pages (running headers, footers) and bare page numbers are
dropped. Lines are joined into paragraphs (a line much shorter than the text width ends one) and a
word split at a line end is joined when the document spells it unhyphenated elsewhere or never
spells it with the hyphen (``Bin-``/``gley`` -> ``Bingley``, ``well-``/``known`` stays). Chapters
come from the outline when there is one, else from heading lines ("Chapter 1", "CHAPTER I.").
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from ..errors import CorruptDocumentError, EncryptedDocumentError, NeedsOCRError
from ._book import Book, Chapter, clean_line, join_paragraphs
from ._headings import is_heading, is_subtitle
from ._safety import check_magic, check_size
from .text import LANGUAGES, front_matter, split_chapters, strip_gutenberg

log = logging.getLogger("infsum")

EDGE_LINES = 2  # lines at the top and at the bottom of a page that may be running headers/footers
MIN_REPEATS = 3  # a header/footer must recur on this many pages (digits ignored) to be dropped
SHORT_LINE = 0.75  # a line shorter than this fraction of the text width ends its paragraph
HEADING_WIDTH = 0.7  # a heading line is shorter than this fraction of the text width
COLUMN_LINE_CHARS = 60  # pages whose median line is shorter than this may be set in columns
MIN_GUTTER_LINES = 10  # lines that must run past a gutter for it to count
GUTTER_CLEAR = 0.9  # fraction of those lines that must be blank at the gutter
MAX_COLUMN_MISSES = 4  # after this many short-lined pages without a gutter, stop trying layout mode

_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st",
                            "\u00ad": None})  # fmt: skip
_PAGE_NUMBER = re.compile(r"^(?:page\s+)?[-–—(\[]?\s*(?:\d+|[ivxlcdm]+)\s*[-–—)\]]?(?:\s+of\s+\d+)?$", re.I)
_NUMBERED_HEADER = re.compile(r"^(?:\d+\s+\D.{0,60}|.{0,60}\D\s+\d+)$")  # "12 CONTENTS", "CHAPTER 3 41"
_WORD = re.compile(r"\w+(?:-\w+)*")
_HYPHENATED_END = re.compile(r"(\w+)-$")
_LEADING_WORD = re.compile(r"^\w+")
_SENTENCE_END = (".", "!", "?", ":", ";", '"', "'", "\u201d", "\u2019", ")", "]", "*")


def _open(path: Path, password: str | None):
    from pypdf import PdfReader

    try:
        reader = PdfReader(path, strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            if password is None:
                raise EncryptedDocumentError(f"{path}: encrypted; pass the password with --password")
            if not reader.decrypt(password):
                raise EncryptedDocumentError(f"{path}: wrong password; check the value given to --password")
        len(reader.pages)  # walks the page tree: a broken one fails here rather than later
    except EncryptedDocumentError:
        raise
    except Exception as e:  # pypdf raises many kinds (PdfReadError, KeyError, ValueError...) on damage
        raise CorruptDocumentError(
            f"{path}: not a readable PDF ({type(e).__name__}: {e}); check the file"
        ) from e
    return reader


def _gutters(lines: list[str]) -> list[int]:
    """Character columns of blank gutters that run down a layout-mode page (at most two)."""
    width = max((len(x) for x in lines), default=0)
    found: list[int] = []
    run: list[int] = []
    for c in range(int(width * 0.2), int(width * 0.8)):
        reaching = [x for x in lines if len(x.rstrip()) > c + 1]
        clear = sum(not x[c - 1 : c + 2].strip() for x in reaching)
        if len(reaching) >= MIN_GUTTER_LINES and clear >= GUTTER_CLEAR * len(reaching):
            run.append(c)
        elif run:
            found.append(run[len(run) // 2])
            run = []
    if run:
        found.append(run[len(run) // 2])
    return found[:2]


def read_columns(layout: str) -> list[str] | None:
    """Lines of a layout-mode page read column by column, or None when it has no gutter.

    Lines that cross a gutter (titles, running heads) stay where they are; each run of lines
    between them is read column by column.
    """
    lines = layout.splitlines()
    cuts = _gutters(lines)
    if not cuts:
        return None
    out: list[str] = []
    band: list[list[str]] = []

    def flush() -> None:
        for col in range(len(cuts) + 1):
            out.extend(row[col] for row in band)
        band.clear()

    for line in lines:
        if any(line[c - 1 : c + 2].strip() for c in cuts if len(line) > c):
            flush()
            out.append(line.strip())
            continue
        bounds = [0, *cuts, len(line)]
        band.append([line[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)])
    flush()
    return out


class _Complaints(logging.Handler):
    """Counts the warnings pypdf logs (it recovers from damage quietly rather than raising)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _page_lines(path: Path, reader) -> tuple[list[list[str]], list[int]]:
    """Cleaned text lines of every page (empty strings mark blank lines), and the numbers of the
    pages that are damaged: they raised, or yielded no text while pypdf complained."""
    pages = []
    damaged = []
    misses = 0  # pages that looked like columns in layout mode but had no gutter
    complaints = _Complaints()
    pypdf_log = logging.getLogger("pypdf")
    pypdf_log.addHandler(complaints)
    try:
        for i, page in enumerate(reader.pages):
            before = complaints.count
            try:
                lines = page.extract_text().splitlines()
                lengths = sorted(len(x.strip()) for x in lines if x.strip())
                short = len(lengths) >= 15 and lengths[len(lengths) // 2] < COLUMN_LINE_CHARS
                if short and misses < MAX_COLUMN_MISSES:
                    columns = read_columns(page.extract_text(extraction_mode="layout"))
                    misses += columns is None
                    lines = columns or lines
                if complaints.count > before and not any(x.strip() for x in lines):
                    damaged.append(i + 1)
            except Exception as e:  # one damaged page must not lose the book
                log.warning("%s: page %d could not be read (%s); skipped", path, i + 1, e)
                lines = []
                damaged.append(i + 1)
            pages.append([clean_line(x.translate(_LIGATURES)) for x in lines])
    finally:
        pypdf_log.removeHandler(complaints)
    return pages, damaged


def _furniture_key(line: str) -> str:
    return re.sub(r"\d+", "#", re.sub(r"\W+", "", line.lower()))


def _chapter_opening(line: str) -> bool:
    """A heading that opens a chapter ("Chapter 4"), not a running head ("CHAPTER 3. TITLE 27")."""
    return is_heading(line) and (len(line.split()) <= 2 or not re.search(r"\s\d+$", line))


def strip_furniture(pages: list[list[str]]) -> list[list[str]]:
    """Drop running headers and footers (recurring at a page's top or bottom) and page numbers."""
    edges = []
    for lines in pages:
        text = [i for i, x in enumerate(lines) if x]
        edges.append(text[:EDGE_LINES] + text[-EDGE_LINES:])
    counts = Counter(
        k for lines, idx in zip(pages, edges, strict=True) for k in {_furniture_key(lines[i]) for i in idx}
    )
    out = []
    for lines, idx in zip(pages, edges, strict=True):
        drop = {
            i
            for i in idx
            if _PAGE_NUMBER.match(lines[i])
            or counts[_furniture_key(lines[i])] >= MIN_REPEATS
            and not _chapter_opening(lines[i])
            or _NUMBERED_HEADER.match(lines[i])
            and len(lines[i].split()) <= 8
            and lines[i].upper() == lines[i]
        }
        out.append([x for i, x in enumerate(lines) if i not in drop])
    return out


def _vocabulary(lines: list[str]) -> set[str]:
    return {w.lower() for line in lines for w in _WORD.findall(line)}


def _join(cur: str, line: str, vocab: set[str]) -> str:
    """Append a line to a paragraph, undoing an end-of-line hyphenation the document does not use."""
    if not cur:
        return line
    end, start = _HYPHENATED_END.search(cur), _LEADING_WORD.match(line)
    if end and start and line[0].islower():
        left, right = end.group(1), start.group(0)
        if (left + right).lower() in vocab or f"{left}-{right}".lower() not in vocab:
            return cur[:-1] + line
        return cur + line
    return f"{cur} {line}"


def paragraphs(lines: list[str], vocab: set[str], width: int) -> list[str]:
    """Join lines into paragraphs. A blank line, a heading line (and a title line under it) or a
    short line ending a sentence ends one; a short line mid-sentence (text set around a picture)
    does not."""
    paras: list[str] = []
    cur = ""
    after_heading = False
    for line in lines:
        heading = bool(line) and len(line) < HEADING_WIDTH * width and is_heading(line)
        if heading or not line or after_heading and is_subtitle(line):
            paras.extend((cur, line))
            cur, after_heading = "", heading
            continue
        after_heading = False
        cur = _join(cur, line, vocab)
        if len(line) < SHORT_LINE * width and line.endswith(_SENTENCE_END):
            paras.append(cur)
            cur = ""
    paras.append(cur)
    return [p for p in paras if p]


def _outline(reader) -> list[tuple[str, int]]:
    """(title, page index) of the outline's top level (its children when the top holds one entry)."""
    try:
        outline = reader.outline
        top = [e for e in outline if not isinstance(e, list)]
        if len(top) == 1 and len(outline) > 1 and isinstance(outline[1], list):
            top = [e for e in outline[1] if not isinstance(e, list)]
        entries = [(clean_line(str(e.title)), reader.get_destination_page_number(e)) for e in top]
    except Exception as e:  # a broken outline is not a broken book
        log.info("outline unreadable (%s); finding chapters from headings", e)
        return []
    return [(t, p) for t, p in entries if t and p is not None]


def _outline_chapters(
    lines: list[str], page_starts: list[int], outline: list[tuple[str, int]], vocab: set[str], width: int
) -> list[Chapter]:
    """Cut the book at the first line of each outline entry's page (at its title line when found)."""
    starts = []
    for title, page in outline:
        first = page_starts[page]
        key = _furniture_key(title)
        window = range(first, min(len(lines), first + 20))
        starts.append(next((i for i in window if key and _furniture_key(lines[i]) == key), first))
    chapters = []
    bounds = [*starts, len(lines)]
    for (title, _), a, b in zip(outline, bounds, bounds[1:], strict=False):
        body = lines[a + 1 : b] if _furniture_key(lines[a]) == _furniture_key(title) else lines[a:b]
        text = join_paragraphs(paragraphs(body, vocab, width))
        if text:
            chapters.append(Chapter(title, text))
    return chapters


def _metadata(reader) -> dict[str, str]:
    fields = {}
    try:
        meta = reader.metadata or {}
        title, author = str(meta.get("/Title") or "").strip(), str(meta.get("/Author") or "").strip()
        lang = str(reader.trailer["/Root"].get("/Lang") or "").strip()
    except Exception:  # broken metadata is ignored
        return {}
    title = re.sub(r"^Microsoft Word - ", "", title)
    if title and not re.search(r"\.(pdf|docx?|tex|dvi)$", title, re.I):
        if m := re.match(r"^(.+?),\s+by\s+(.+)$", title):
            title, author = m.group(1), m.group(2)
        fields["title"] = title
    if author:
        fields["author"] = author
    if lang:
        fields["language"] = lang
    return fields


def read_pdf(path: Path, *, password: str | None = None) -> Book:
    """Read a PDF's text layer into a Book (see the module docstring)."""
    check_magic(path, b"%PDF-", within=1024, kind="PDF")
    check_size(path, "MAX_BOOK_MB")
    reader = _open(path, password)
    pages, damaged = _page_lines(path, reader)
    if not any(x for lines in pages for x in lines):
        if damaged:  # a broken content stream or object cycle: OCR would not help
            raise CorruptDocumentError(
                f"{path}: damaged, no text could be read ({len(damaged)} of {len(pages)} pages broken, "
                f"first page {damaged[0]}); get an undamaged copy or repair it, "
                f"e.g. `qpdf {path.name} fixed.pdf`"
            )
        raise NeedsOCRError(
            f"{path}: no text layer (a scan); run OCR first, e.g. `ocrmypdf {path.name} out.pdf`"
        )
    for i, lines in enumerate(pages):
        if not any(lines):
            log.info("%s: page %d has no text (an image or blank page)", path, i + 1)
    pages = strip_furniture(pages)
    page_starts, lines = [], []
    for page in pages:
        page_starts.append(len(lines))
        lines.extend(page)
    lines, fields = _cut_gutenberg(lines)
    fields = {**fields, **_metadata(reader)} if "title" not in fields else fields
    vocab = _vocabulary(lines)
    lengths = sorted(len(x) for x in lines if x)
    width = lengths[int(len(lengths) * 0.9)] if lengths else 0
    outline = _outline(reader)
    paras = paragraphs(lines, vocab, width)
    title, author, start = front_matter([[p] for p in paras], fields)
    if len(outline) >= 2:
        chapters = _outline_chapters(lines, page_starts, outline, vocab, width)
    else:
        chapters = split_chapters([[p] for p in paras[start:]], book_title=title or path.stem, caps=False)
    language = fields.get("language")
    language = LANGUAGES.get(language.lower(), language) if language else None
    return Book(title or path.stem, author, language, tuple(chapters), str(path))


def _cut_gutenberg(lines: list[str]) -> tuple[list[str], dict[str, str]]:
    """Blank out a Project Gutenberg header and licence (line positions are kept for the outline)."""
    text = "\n".join(lines)
    body, fields = strip_gutenberg(text)
    if body == text:
        return lines, fields
    first = text.find(body) if body else -1
    if first < 0:
        return lines, fields
    a = text[:first].count("\n") + (first > 0)  # the body starts on the line after the marker
    b = a + body.count("\n") + 1
    return [x if a <= i < b else "" for i, x in enumerate(lines)], fields
