"""Opening untrusted archives and XML safely: zip bounds checked before any parser sees them."""

from __future__ import annotations

import re
import zipfile
from html.entities import name2codepoint
from pathlib import Path, PurePosixPath

from lxml import etree

from ..errors import CorruptDocumentError, UnsafeDocumentError

# Bounds for an EPUB's zip entries, checked against the sizes in the zip directory before anything is
# read. Python's zipfile never inflates past an entry's declared size, so a lying header cannot get
# around them. The largest real EPUB entries are images of a few MiB and text files under 2 MiB.
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # one uncompressed entry
MAX_TOTAL_BYTES = 512 * 1024 * 1024  # all entries together, uncompressed
MAX_RATIO = 100  # uncompressed / compressed size; text deflates ~3-10x, bombs reach 1000x
RATIO_FLOOR_BYTES = 1024 * 1024  # entries smaller than this are never refused for their ratio
MAX_ENTRIES = 10_000
MARKUP_SUFFIXES = (".xml", ".opf", ".ncx", ".xhtml", ".html", ".htm", ".svg")

# an XML document that declares entities (billion laughs, external entities) is refused outright
_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

# XHTML is parsed with entities left unexpanded, no DTD loading and no network access
XHTML_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=True
)


def _escapes(name: str) -> bool:
    """True when an entry name is absolute or climbs out of the archive with ``..``."""
    name = name.replace("\\", "/")
    return name.startswith("/") or bool(_WINDOWS_DRIVE.match(name)) or ".." in PurePosixPath(name).parts


def check_zip(path: Path) -> None:
    """Refuse a zip whose entries escape the archive, inflate beyond the bounds above, or hold XML
    that declares entities; raise ``CorruptDocumentError`` when it is not a readable zip at all."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise UnsafeDocumentError(f"{path}: {len(infos)} zip entries (limit {MAX_ENTRIES}); refusing")
            total = 0
            for info in infos:
                _check_entry(path, info)
                total += info.file_size
                if total > MAX_TOTAL_BYTES:
                    raise UnsafeDocumentError(
                        f"{path}: unpacks to over {MAX_TOTAL_BYTES >> 20} MiB; refusing a possible zip bomb"
                    )
            for info in infos:
                if info.filename.lower().endswith(MARKUP_SUFFIXES) and _ENTITY_DECL.search(zf.read(info)):
                    raise UnsafeDocumentError(
                        f"{path}: {info.filename} declares XML entities; refusing (possible entity attack)"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
        raise CorruptDocumentError(
            f"{path}: not a readable EPUB ({e}); check that the file is complete"
        ) from e


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    if _escapes(info.filename):
        raise UnsafeDocumentError(f"{path}: entry {info.filename!r} points outside the archive; refusing")
    if info.file_size > MAX_ENTRY_BYTES:
        raise UnsafeDocumentError(
            f"{path}: entry {info.filename!r} unpacks to {info.file_size >> 20} MiB "
            f"(limit {MAX_ENTRY_BYTES >> 20} MiB); refusing a possible zip bomb"
        )
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise UnsafeDocumentError(
            f"{path}: entry {info.filename!r} is compressed over {MAX_RATIO}:1; refusing a possible zip bomb"
        )


_NAMED_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = {b"amp", b"lt", b"gt", b"quot", b"apos"}


def _numeric_entity(m: re.Match[bytes]) -> bytes:
    name = m.group(1)
    code = name2codepoint.get(name.decode("ascii"))
    return m.group(0) if name in _XML_ENTITIES or code is None else b"&#%d;" % code


def parse_xhtml(data: bytes) -> etree._Element | None:
    """Parse an XHTML document safely (see ``XHTML_PARSER``); None when nothing could be recovered.

    HTML named entities (``&nbsp;``) become numeric references first: XML does not define them, and
    libxml2's recovery loses text after an undefined one.
    """
    try:
        return etree.fromstring(_NAMED_ENTITY.sub(_numeric_entity, data), parser=XHTML_PARSER)
    except etree.XMLSyntaxError:
        return None
