"""The console script's allocator settings: applied where glibc is, harmless where not."""

import ctypes.util
import sys

import pytest

from market import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_every_setting() -> None:
    assert allocator.keep_freed_memory()


def test_no_c_library_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert not allocator.keep_freed_memory()
