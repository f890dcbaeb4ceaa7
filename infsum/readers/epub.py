"""EPUB 2 and 3 via ebooklib: spine order, titles from nav/NCX, notes and images dropped.

Reading order is the spine; non-linear items (cover, contents) and the navigation document are
skipped, as are documents marked (by ``epub:type`` or by their table-of-contents title) as title
page, imprint, colophon, copyright, contents, endnotes and the like. A chapter's title comes from
the nav document (EPUB 3) or the NCX (EPUB 2), else from the document's first heading. A spine
document the table of contents does not list continues the chapter before it (calibre splits long
chapters into several files); documents before the first listed one are front matter and dropped.

Footnotes and endnotes are dropped, not moved: note references (``epub:type="noteref"``) are cut
out of the running text and note bodies (``footnote``/``endnote`` asides, endnote documents) are
left out, so no note is spliced mid-sentence. Images, SVG and MathML are dropped.

The zip is checked (``_safety.check_zip``) before ebooklib opens it, and XHTML is parsed with
entities unexpanded, no DTD and no network.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from lxml import etree

from ..errors import CorruptDocumentError, DRMProtectedError
from ._book import Book, Chapter, join_paragraphs
from ._headings import is_group
from ._safety import check_magic, check_size, check_zip, parse_xhtml

log = logging.getLogger("infsum")

EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"
# documents that are not part of the work itself
SKIP_TYPES = {
    "cover", "titlepage", "halftitlepage", "imprint", "colophon", "copyright-page", "toc",
    "loi", "lot", "landmarks", "endnotes", "footnotes", "rearnotes", "index",
}  # fmt: skip
SKIP_TITLES = {
    "cover", "title page", "titlepage", "imprint", "colophon", "uncopyright", "copyright",
    "contents", "table of contents", "endnotes", "notes", "footnotes", "index", "list of illustrations",
}  # fmt: skip
# elements cut out of the running text by their epub:type or ARIA role
NOTE_TYPES = {"noteref", "footnote", "endnote", "rearnote", "footnotes", "endnotes", "rearnotes"}
NOTE_ROLES = {"doc-noteref", "doc-footnote", "doc-endnote", "doc-endnotes"}
DROP_TAGS = {"head", "script", "style", "img", "svg", "math", "picture", "video", "audio", "object",
             "embed", "iframe", "canvas", "map", "nav"}  # fmt: skip
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "hgroup"}
BLOCK_TAGS = {
    "p", "div", "section", "article", "aside", "header", "footer", "main", "blockquote", "pre",
    "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "figure", "figcaption", "address", "hr", "body",
}  # fmt: skip
SPACE_TAGS = {"br", "td", "th"}


def _local(el: etree._Element) -> str:
    """Local tag name without namespace ("" for comments, entities and the like)."""
    return etree.QName(el).localname.lower() if isinstance(el.tag, str) else ""


def _types(el: etree._Element) -> set[str]:
    return set(el.get(EPUB_TYPE, "").split()) | set(el.get("role", "").split())


def _remove(el: etree._Element) -> None:
    """Cut an element out of the tree, keeping the text that follows it."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _prune(root: etree._Element) -> None:
    """Drop comments, images, scripts and note references/bodies from the tree in place."""
    etree.strip_elements(root, etree.Comment, etree.ProcessingInstruction, with_tail=False)
    doomed = [
        el
        for el in root.iter()
        if isinstance(el.tag, str) and (_local(el) in DROP_TAGS or _types(el) & (NOTE_TYPES | NOTE_ROLES))
    ]
    for el in doomed:
        _remove(el)


def _heading_text(el: etree._Element) -> str:
    if _local(el) == "hgroup":
        parts = [" ".join("".join(c.itertext()).split()) for c in el if isinstance(c.tag, str)]
        return ": ".join(p for p in parts if p)
    return " ".join("".join(el.itertext()).split())


def extract(body: etree._Element) -> tuple[list[str], str | None]:
    """Paragraphs of a (pruned) XHTML body without its headings, and the first heading's text."""
    paras: list[str] = []
    buf: list[str] = []
    heading: str | None = None
    inside: etree._Element | None = None  # the heading being skipped

    def flush() -> None:
        text = " ".join("".join(buf).split())
        buf.clear()
        if text:
            paras.append(text)

    for event, el in etree.iterwalk(body, events=("start", "end")):
        tag = _local(el)
        if inside is not None:
            if event == "end" and el is inside:
                inside = None
                buf.append(el.tail or "")
            continue
        if event == "start":
            if tag in HEADING_TAGS:
                heading = heading or _heading_text(el) or None
                flush()
                inside = el
                continue
            if tag in BLOCK_TAGS:
                flush()
            elif tag in SPACE_TAGS:
                buf.append(" ")
            if tag and el.text:
                buf.append(el.text)
        else:
            if tag in BLOCK_TAGS:
                flush()
            if el is not body and el.tail:
                buf.append(el.tail)
    flush()
    return paras, heading


def _toc_titles(book) -> dict[str, str]:
    """Document name -> title of its first table-of-contents entry (nav or NCX, via ebooklib)."""
    titles: dict[str, str] = {}
    toc = book.toc if isinstance(book.toc, (list, tuple)) else [book.toc]  # one entry: not in a list
    stack = list(reversed(toc))
    while stack:
        node = stack.pop()
        if isinstance(node, (tuple, list)) and len(node) == 2:
            section, children = node
            stack.extend(reversed(children))
            node = section
        href, title = getattr(node, "href", None), getattr(node, "title", None)
        if href and title and title.strip():
            titles.setdefault(unquote(href.split("#")[0]), " ".join(title.split()))
    return titles


def _title_for(name: str, titles: dict[str, str]) -> str | None:
    if name in titles:
        return titles[name]
    base = PurePosixPath(name).name  # hrefs relative to the nav document rather than the OPF
    matches = [t for href, t in titles.items() if PurePosixPath(href).name == base]
    return matches[0] if len(matches) == 1 else None


class _Doc:
    """One spine document: its table-of-contents title, first heading, paragraphs, and skip flag."""

    def __init__(self, name: str, toc_title: str | None, root: etree._Element) -> None:
        body = next((el for el in root.iter() if _local(el) == "body"), root)
        kinds = _types(body).union(*(_types(el) for el in body if isinstance(el.tag, str)))
        self.name, self.toc_title = name, toc_title
        self.skip = bool(kinds & SKIP_TYPES) or (toc_title or "").lower().strip(" .:") in SKIP_TITLES
        _prune(body)
        self.paras, self.heading = extract(body)


def _spine_docs(path: Path, book) -> list[_Doc]:
    import ebooklib
    from ebooklib import epub

    titles = _toc_titles(book)
    docs = []
    for entry in book.spine:
        idref, linear = (entry + (None,))[:2] if isinstance(entry, tuple) else (entry, None)
        if idref is None or linear == "no":  # None: an XML comment inside <spine>
            continue
        item = book.get_item_with_id(idref)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(item, epub.EpubNav):
            continue
        root = parse_xhtml(item.content)  # the raw bytes: get_content() would re-render the page
        if root is None:
            log.warning("%s: %s is not readable XHTML; skipped", path, item.get_name())
            continue
        docs.append(_Doc(item.get_name(), _title_for(item.get_name(), titles), root))
    return docs


def _same(a: str, b: str) -> bool:
    """Equal ignoring case, spaces and punctuation ("CHAPTER I." and "Chapter I")."""
    return re.sub(r"\W+", "", a).casefold() == re.sub(r"\W+", "", b).casefold()


def _heading_only(d: _Doc) -> bool:
    """A document with a heading and no text, or a single line of at most a few words."""
    if not d.paras:
        return d.heading is not None
    return len(d.paras) == 1 and len(d.paras[0].split()) <= MAX_HEADING_PAGE_WORDS


MAX_HEADING_PAGE_WORDS = 6  # a lone line this short in its own file is a part title, not prose


def assemble(docs: list[_Doc], *, keep_all: bool = False) -> list[Chapter]:
    """Group spine documents into chapters (see the module docstring)."""
    has_toc = any(d.toc_title for d in docs)
    parts: list[tuple[str, list[str]]] = []
    group = ""
    for d in docs:
        if d.skip and not keep_all:
            continue
        if d.toc_title or not has_toc or keep_all and not parts:
            title = d.toc_title or d.heading or f"Section {len(parts) + 1}"
        elif parts and _heading_only(d):
            title = d.heading or d.paras[0]  # a page holding only a heading ("VOLUME ONE")
            d.paras = []
        elif parts:
            parts[-1][1].extend(d.paras)  # a continuation file
            continue
        else:
            continue  # front matter before the first listed document
        if parts and not parts[-1][1]:
            prev = parts.pop()[0]
            group = prev if is_group(prev) else group
        paras = d.paras[1:] if d.paras and _same(d.paras[0], title) else d.paras  # title as text
        parts.append((f"{group}: {title}" if group else title, list(paras)))
        group = "" if paras else group
    return [Chapter(t, join_paragraphs(p)) for t, p in parts if p]


def _author(book) -> str | None:
    creators = [c[0].strip() for c in book.get_metadata("DC", "creator") if c and c[0] and c[0].strip()]
    flipped = [re.sub(r"^([^,]+),\s*([^,]+)$", r"\2 \1", c) for c in creators]  # "Austen, Jane"
    return ", ".join(flipped) or None


def _first(book, field: str) -> str | None:
    values = [v[0].strip() for v in book.get_metadata("DC", field) if v and v[0] and v[0].strip()]
    return " ".join(values[0].split()) if values else None


# font obfuscation (IDPF, Adobe): fonts scrambled so they cannot be lifted out; the text is readable
FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
_ENC = "{http://www.w3.org/2001/04/xmlenc#}"


def check_encryption(path: Path) -> None:
    """Refuse an EPUB whose ``META-INF/encryption.xml`` encrypts anything but fonts by obfuscation
    (DRM: the text can only be opened by the seller's software); font obfuscation alone is fine."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        if "META-INF/encryption.xml" not in z.namelist():
            return
        root = parse_xhtml(z.read("META-INF/encryption.xml"))
    if root is None:
        raise CorruptDocumentError(
            f"{path}: META-INF/encryption.xml is unreadable; check that the file is complete"
        )
    for data in root.iter(f"{_ENC}EncryptedData"):
        method = data.find(f"{_ENC}EncryptionMethod")
        algorithm = method.get("Algorithm", "") if method is not None else ""
        ref = data.find(f"{_ENC}CipherData/{_ENC}CipherReference")
        uri = ref.get("URI", "") if ref is not None else ""
        is_font = uri.lower().endswith((".otf", ".ttf", ".woff", ".woff2"))
        if algorithm not in FONT_OBFUSCATION or not is_font:
            raise DRMProtectedError(
                f"{path}: {uri or 'a file'} is encrypted ({algorithm or 'unknown method'}), which is DRM; "
                "export a DRM-free copy of the book from your store or library"
            )


def read_epub(path: Path) -> Book:
    """Read an EPUB file into a Book (see the module docstring)."""
    from ebooklib import epub

    check_magic(path, b"PK\x03\x04", within=4, kind="EPUB")
    check_size(path, "MAX_BOOK_MB")
    check_zip(path)
    check_encryption(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ebooklib warns about its own future defaults
            book = epub.read_epub(str(path), options={"ignore_ncx": False})
    except Exception as e:  # ebooklib raises bare KeyErrors, AttributeErrors ... on broken books
        raise CorruptDocumentError(
            f"{path}: not a readable EPUB ({type(e).__name__}: {e}); check that the file is complete"
        ) from e
    docs = _spine_docs(path, book)
    chapters = assemble(docs)
    if not chapters:  # all front and back matter (a title page only): read what there is
        chapters = assemble(docs, keep_all=True)
    return Book(_first(book, "title"), _author(book), _first(book, "language"), tuple(chapters), str(path))
