"""Reading books: EPUB, PDF and plain text into one clean, chaptered ``Book``.

``load_book(path)`` picks the reader by suffix. User-caused problems raise ``infsum.errors``
subclasses with one-line messages naming the file and the fix; problems a reader recovers from
(a broken chapter, an image-only page) are logged on ``logging.getLogger("infsum")``.

Reading is bounded: a file's size is checked with ``stat`` and a PDF's or EPUB's magic bytes with a
1 KB read before anything parses it, and an EPUB's zip directory before anything inflates; the
bounds are in ``infsum.limits`` (raise one with its ``INFSUM_<NAME>`` environment variable).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from ..errors import BookNotFoundError, ConfigError, EmptyDocumentError, UnsupportedFormatError
from ._book import Book, Chapter

__all__ = ["Book", "Chapter", "load_book", "READERS", "SUFFIXES", "formats"]

# suffix -> "module:function" of its reader, imported on first use (pypdf and ebooklib load slowly);
# every reader takes the path (and the PDF reader a password) and returns a Book
READERS = {
    ".epub": "epub:read_epub",
    ".pdf": "pdf:read_pdf",
    ".txt": "text:read_text",
    ".md": "text:read_text",
}
SUFFIXES = tuple(READERS)
PASSWORD_SUFFIXES = (".pdf",)  # the formats whose reader takes a password


def formats() -> str:
    """The readable suffixes as prose, for messages and help texts: ".epub, .pdf, .txt or .md"."""
    *rest, last = SUFFIXES
    return f"{', '.join(rest)} or {last}"


def load_book(path: str | Path, *, password: str | None = None) -> Book:
    """Read an EPUB, PDF or plain-text book into a ``Book`` of chapters in reading order.

    The reader is chosen by suffix (``READERS``). ``password`` opens an encrypted PDF (the empty
    password is always tried first); giving one for any other format is a ``ConfigError``.
    """
    p = Path(path)
    if not p.exists():
        raise BookNotFoundError(f"{p}: no such file; check the path")
    if not p.is_file():
        raise BookNotFoundError(f"{p}: not a file; give the path of a book file")
    suffix = p.suffix.lower()
    if password is not None and suffix not in PASSWORD_SUFFIXES:
        raise ConfigError(f"{p}: a password only opens a PDF; leave out --password for this file")
    if suffix not in READERS:
        raise UnsupportedFormatError(
            f"{p}: unsupported format {suffix or '(no suffix)'!r}; give an {formats()} file"
        )
    module, _, function = READERS[suffix].partition(":")
    reader = getattr(import_module(f"{__name__}.{module}"), function)
    book = reader(p, password=password) if suffix in PASSWORD_SUFFIXES else reader(p)
    if book.words == 0:
        raise EmptyDocumentError(f"{p}: no text found in the book; check that it is the right file")
    return book
