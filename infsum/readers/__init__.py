"""Reading books: EPUB, PDF and plain text into one clean, chaptered ``Book``.

``load_book(path)`` picks the reader by suffix. User-caused problems raise ``infsum.errors``
subclasses with one-line messages naming the file and the fix; problems a reader recovers from
(a broken chapter, an image-only page) are logged on ``logging.getLogger("infsum")``.

Reading is bounded: a file's size is checked with ``stat`` and a PDF's or EPUB's magic bytes with a
1 KB read before anything parses it, and an EPUB's zip directory before anything inflates; the
bounds are in ``infsum.limits`` (raise one with its ``INFSUM_<NAME>`` environment variable).

``read_stream(stream, fmt)`` reads a book from a byte stream (standard input: the CLI's ``-``)
through a temporary file, so every format has one reader, the same for a stream as for a file.
"""

from __future__ import annotations

import dataclasses
import tempfile
from importlib import import_module
from pathlib import Path
from typing import BinaryIO

from .. import limits
from ..errors import (
    BookNotFoundError,
    ConfigError,
    EmptyDocumentError,
    InfsumError,
    TooLargeError,
    UnsupportedFormatError,
)
from ._book import Book, Chapter

__all__ = ["Book", "Chapter", "load_book", "read_stream", "READERS", "SUFFIXES", "STDIN", "formats"]

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
STDIN = "-"  # the path that means standard input, and the source of a book read from it
FORMAT_NAMES = tuple(s[1:] for s in SUFFIXES)  # "txt", "md", ... : read_stream's format names


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


def read_stream(stream: BinaryIO, fmt: str = "txt", *, password: str | None = None) -> Book:
    """Read a book in format ``fmt`` (one of ``FORMAT_NAMES``: the suffix without its dot) from a
    byte stream (standard input), through a temporary file that the format's reader reads as it
    reads any file; the book's ``source`` is ``STDIN`` and error messages say "standard input".

    The stream is copied in chunks and refused (``TooLargeError``) beyond the largest book bound,
    so it is never held whole in memory before the reader's own size check.
    """
    suffix = "." + fmt.lower().lstrip(".")
    if suffix not in READERS:
        raise UnsupportedFormatError(
            f"standard input: unsupported format {fmt!r}; give --input-format {' or '.join(FORMAT_NAMES)}"
        )
    bound = max(limits.get("MAX_TEXT_MB"), limits.get("MAX_BOOK_MB")) * limits.MB
    with tempfile.TemporaryDirectory(prefix="infsum-stdin-") as folder:
        path = Path(folder) / f"stdin{suffix}"  # the stem is the title of a text without one
        with path.open("wb") as f:
            copied = 0
            while chunk := stream.read(1 << 20):
                copied += len(chunk)
                if copied > bound:
                    raise TooLargeError(
                        f"standard input: over {bound // limits.MB} MB, the largest book infsum reads; "
                        "give the book as a file"
                    )
                f.write(chunk)
        try:
            book = load_book(path, password=password)
        except InfsumError as e:  # the temporary path means nothing to the user
            raise type(e)(str(e).replace(str(path), "standard input")) from None
    return dataclasses.replace(book, source=STDIN)
