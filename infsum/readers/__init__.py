"""Reading books: EPUB, PDF and plain text into one clean, chaptered ``Book``.

``load_book(path)`` picks the reader by suffix. User-caused problems raise ``infsum.errors``
subclasses with one-line messages naming the file and the fix; problems a reader recovers from
(a broken chapter, an image-only page) are logged on ``logging.getLogger("infsum")``.

Reading is bounded: a file's size is checked with ``stat`` and a PDF's or EPUB's magic bytes with a
1 KB read before anything parses it, and an EPUB's zip directory before anything inflates; the
bounds are in ``infsum.limits`` (raise one with its ``INFSUM_<NAME>`` environment variable).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BookNotFoundError, ConfigError, EmptyDocumentError, UnsupportedFormatError
from ._book import Book, Chapter

__all__ = ["Book", "Chapter", "load_book", "SUFFIXES"]

SUFFIXES = (".epub", ".pdf", ".txt", ".md")


def load_book(path: str | Path, *, password: str | None = None) -> Book:
    """Read an EPUB, PDF or plain-text book into a ``Book`` of chapters in reading order.

    ``password`` opens an encrypted PDF (the empty password is always tried first); giving one for
    any other format is a ``ConfigError``.
    """
    p = Path(path)
    if not p.exists():
        raise BookNotFoundError(f"{p}: no such file; check the path")
    if not p.is_file():
        raise BookNotFoundError(f"{p}: not a file; give the path of a book file")
    suffix = p.suffix.lower()
    if password is not None and suffix != ".pdf":
        raise ConfigError(f"{p}: a password only opens a PDF; leave out --password for this file")
    if suffix in (".txt", ".md"):
        from .text import read_text

        book = read_text(p)
    elif suffix == ".epub":
        from .epub import read_epub

        book = read_epub(p)
    elif suffix == ".pdf":
        from .pdf import read_pdf

        book = read_pdf(p, password=password)
    else:
        raise UnsupportedFormatError(
            f"{p}: unsupported format {suffix or '(no suffix)'!r}; give an .epub, .pdf, .txt or .md file"
        )
    if book.words == 0:
        raise EmptyDocumentError(f"{p}: no text found in the book; check that it is the right file")
    return book
