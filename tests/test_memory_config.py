"""MemoryConfig checks its own values (one place for what every entry point used to check), and
infsum.config stays importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infsum.config import DEFAULT_SEGMENT_LEN, UPDATE_RULES, MemoryConfig
from infsum.errors import ConfigError


@pytest.mark.parametrize("n", [0, -5])
def test_a_segment_length_below_one_is_refused(n: int) -> None:
    with pytest.raises(
        ConfigError, match=f"^segment length {n} must be a positive .*use --segment-len 1 or more"
    ):
        MemoryConfig(segment_len=n)


def test_an_unknown_update_rule_is_refused_naming_the_rules() -> None:
    with pytest.raises(
        ConfigError, match="^unknown memory update rule 'nope': use --update delta or linear$"
    ):
        MemoryConfig(update="nope")  # type: ignore[arg-type]


def test_valid_settings_pass_and_replace_is_checked_too() -> None:
    from dataclasses import replace

    assert MemoryConfig().segment_len == DEFAULT_SEGMENT_LEN
    for rule in UPDATE_RULES:
        assert MemoryConfig(segment_len=1, update=rule).update == rule
    with pytest.raises(ConfigError, match="segment length 0"):
        replace(MemoryConfig(), segment_len=0)


def test_config_imports_without_torch() -> None:
    code = "import sys; sys.modules['torch'] = None; import infsum.config; infsum.config.MemoryConfig()"
    subprocess.run([sys.executable, "-c", code], check=True)
