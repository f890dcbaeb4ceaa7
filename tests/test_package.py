"""The package's public surface: every exported name resolves, and importing stays light."""

from __future__ import annotations

import subprocess
import sys

import infsum


def test_every_exported_name_resolves() -> None:
    missing = [name for name in infsum.__all__ if getattr(infsum, name, None) is None]
    assert missing == []


def test_importing_infsum_does_not_import_torch() -> None:
    code = "import sys, infsum; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        infsum.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("infsum.no_such_name should raise AttributeError")
