"""The console script's allocator settings: applied where glibc is, harmless where not."""

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from market import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_every_setting() -> None:
    assert allocator.keep_freed_memory()


def test_no_c_library_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert not allocator.keep_freed_memory()


def test_polars_allocator_setting_is_made_unless_the_user_made_one() -> None:
    environ: dict[str, str] = {}
    assert allocator.keep_polars_freed_memory(environ)
    assert environ == {allocator.POLARS_CONF: allocator.POLARS_DECAY}
    own = {allocator.POLARS_CONF: "dirty_decay_ms:0"}
    assert not allocator.keep_polars_freed_memory(own)
    assert own == {allocator.POLARS_CONF: "dirty_decay_ms:0"}


_WHEN_POLARS_LOADS = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "polars" and not seen:
            seen.append(os.environ.get("_RJEM_MALLOC_CONF"))
        return None
sys.meta_path.insert(0, Watch())
import cli
print(seen[0])
"""


def test_the_console_script_sets_polars_allocator_before_polars_loads() -> None:
    """jemalloc reads its settings once, when Polars' library is loaded: the setting must be
    in the environment by then, not merely by the time `main` runs."""
    env = {k: v for k, v in os.environ.items() if k != allocator.POLARS_CONF}
    done = subprocess.run(
        [sys.executable, "-c", _WHEN_POLARS_LOADS], env=env, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1], check=True,
    )  # fmt: skip
    assert done.stdout.strip() == allocator.POLARS_DECAY
