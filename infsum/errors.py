"""Every error infsum raises for a user to act on, in one place.

Policy (after pypdf):
- raise an ``InfsumError`` subclass when the caller must handle the case or change the call (a
  missing file, a book with no text, a model that cannot be loaded, an invalid option value); the
  CLI prints its message as one line and exits 2;
- log on ``logging.getLogger("infsum")`` when infsum recovered by itself: a warning when something
  was left out (a broken EPUB chapter, an unreadable PDF page), info when nothing was (a text file
  read as Windows-1252, an image-only page inside an otherwise readable PDF).

Library code never calls ``warnings.warn`` and leaves showing the log to its caller: the CLI shows
warnings on stderr as ``warning: ...`` lines (hidden by a command's --quiet), info with -v and debug
with -vv.

Messages name the file and the fix, and fit on one line.
"""

from __future__ import annotations


class InfsumError(Exception):
    """Base class: a failure the user can understand and fix."""


class UnsupportedFormatError(InfsumError):
    """The file's suffix is not one infsum can read."""


class BookNotFoundError(InfsumError):
    """The input path does not exist or is not a file."""


class EmptyDocumentError(InfsumError):
    """The document was read but holds no usable text."""


class CorruptDocumentError(InfsumError):
    """The document is damaged or not what its suffix says (bad zip, bad PDF)."""


class UnsafeDocumentError(CorruptDocumentError):
    """The archive tries something dangerous (zip bomb, path escape, external XML entity)."""


class EncryptedDocumentError(InfsumError):
    """The PDF is encrypted and the given (or empty) password does not open it."""


class DRMProtectedError(EncryptedDocumentError):
    """The EPUB's text is encrypted (DRM): only the seller's reading software can open it."""


class TooLargeError(InfsumError):
    """The input is over a bound in ``infsum.limits``; the message names the variable that raises it."""


class NeedsOCRError(InfsumError):
    """The PDF has no text layer (a scan): it needs OCR first."""


class ModelLoadError(InfsumError):
    """The model could not be found, fetched or loaded."""


class TokenizerError(InfsumError):
    """The model's tokenizer could not be built or does not match the reference."""


class PatchError(InfsumError):
    """The model's architecture cannot be converted to Infini-attention."""


class CheckpointError(InfsumError):
    """A memory state, adapter or training checkpoint file is missing, damaged or mismatched."""


class ConfigError(InfsumError):
    """An option value is invalid (a bad segment length, an unknown strategy)."""


class ScoringError(InfsumError):
    """A summary or reference file to score is missing, empty, binary or too long to score."""


class OutputError(InfsumError):
    """An output file or folder cannot be written (a file where a folder should be, permissions, a
    full disk), or a batch output folder is in use by another run."""
