"""Opening untrusted files safely: size, format and zip bounds checked before any parser sees them.

The bounds are in ``infsum.limits`` (overridable with ``INFSUM_<NAME>`` environment variables).
Python's zipfile never inflates past an entry's declared size, so a lying zip header cannot get
around the zip bounds, which are checked against the zip directory before anything is inflated.
"""

from __future__ import annotations

import re
import zipfile
from html.entities import name2codepoint
from pathlib import Path, PurePosixPath

from lxml import etree

from .. import limits
from ..errors import CorruptDocumentError, TooLargeError, UnsafeDocumentError
from ..limits import MB

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


def check_size(path: Path, bound: str) -> None:
    """Refuse a file larger than the bound ``bound`` (in MB) by its size on disk, before reading it."""
    if over := limits.over_mb(bound, path.stat().st_size):
        need, limit = over
        raise TooLargeError(
            f"{path}: {need} MB, over the {limit} MB limit for a book; {limits.raise_hint(bound, need)}"
        )


def check_magic(path: Path, magic: bytes, *, within: int, kind: str) -> None:
    """Refuse a file whose first ``within`` bytes lack ``magic``: it is not a ``kind`` file."""
    with path.open("rb") as f:
        head = f.read(within)
    if magic not in head:
        raise CorruptDocumentError(
            f"{path}: not a readable {kind} (no {magic.decode('latin-1')!r} header in its first "
            f"{within} bytes); check that it is the right, complete file"
        )


def _check_totals(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip whose entries, or its markup entries alone, unpack beyond the total bounds."""
    total = markup = 0
    for info in infos:
        _check_entry(path, info)
        total += info.file_size
        markup += info.file_size if info.filename.lower().endswith(MARKUP_SUFFIXES) else 0
    checks = (("MAX_UNPACKED_MB", total, "its entries"), ("MAX_MARKUP_MB", markup, "its text"))
    for bound, size, what in checks:
        if over := limits.over_mb(bound, size):
            need, limit = over
            raise UnsafeDocumentError(
                f"{path}: {what} unpack to {need} MB, over the {limit} MB limit; refusing a possible "
                f"zip bomb ({limits.raise_hint(bound, need)})"
            )


def check_zip(path: Path) -> None:
    """Refuse a zip whose entries escape the archive, inflate beyond the ``infsum.limits`` bounds, or
    hold XML that declares entities; raise ``CorruptDocumentError`` when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.get("MAX_ENTRIES"):
                raise UnsafeDocumentError(
                    f"{path}: {len(infos)} zip entries, over the {limits.get('MAX_ENTRIES')} limit; "
                    f"refusing ({limits.raise_hint('MAX_ENTRIES', len(infos))})"
                )
            _check_totals(path, infos)
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
    ratio = limits.get("MAX_RATIO")
    if over := limits.over_mb("MAX_ENTRY_MB", info.file_size):
        need, limit = over
        raise UnsafeDocumentError(
            f"{path}: entry {info.filename!r} unpacks to {need} MB, over the {limit} MB limit; refusing "
            f"a possible zip bomb ({limits.raise_hint('MAX_ENTRY_MB', need)})"
        )
    floor = limits.get("RATIO_FLOOR_MB") * MB
    if info.file_size > floor and info.file_size > ratio * max(info.compress_size, 1):
        need = -(-info.file_size // max(info.compress_size, 1))
        raise UnsafeDocumentError(
            f"{path}: entry {info.filename!r} is compressed over {ratio}:1; refusing a possible zip bomb "
            f"({limits.raise_hint('MAX_RATIO', need)})"
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
