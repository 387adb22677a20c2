"""The disk ledger's storage: every write, fsync and rename it makes goes through one object.

`Storage` (the default) is the operating system's calls, one method call per operation: a
handful per committed segment of 65,536 events, so routing them costs nothing measurable.
A test installs a `FaultyStorage` with `installed(...)`: it counts the operations and, at
the one it is told to, fails with ENOSPC or EIO, makes a torn (short) write, or "crashes"
(raises `Crash`, standing for the process dying there), after TigerBeetle's simulator
testing. docs/ledger.md, "Fault injection", says what a fault may leave behind.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn, TypeVar

Fault = Literal["enospc", "eio", "torn", "crash"]
FAULTS: tuple[Fault, ...] = ("enospc", "eio", "torn", "crash")
"""What `FaultyStorage` can do at an operation:
  enospc  the disk is full: a write lands a prefix of its bytes, then OSError(ENOSPC); an
          fsync or rename fails with OSError(ENOSPC) and does nothing
  eio     the device fails: OSError(EIO), the operation does nothing
  torn    the process dies inside the operation: a write lands a prefix of its bytes (an
          fsync or rename does nothing), then `Crash`
  crash   the process dies right after the operation: it is done, then `Crash`"""


class Storage:
    """The file operations of the disk ledger, as the operating system does them."""

    def write(self, file: BinaryIO, data: bytes) -> None:
        """Write all of `data` to `file` and hand it to the OS (not yet synced)."""
        file.write(data)
        file.flush()

    def fsync(self, file: BinaryIO) -> None:
        """Make what was written to `file` durable."""
        os.fsync(file.fileno())

    def rename(self, src: Path, dst: Path) -> None:
        """Move `src` to `dst` atomically, replacing `dst` if it exists."""
        os.replace(src, dst)

    def fsync_dir(self, path: Path) -> None:
        """Make the names in directory `path` durable (a file created or renamed there)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_ACTIVE = [Storage()]


def active() -> Storage:
    """The storage the disk ledger writes through now."""
    return _ACTIVE[-1]


S = TypeVar("S", bound=Storage)


@contextmanager
def installed(storage: S) -> Iterator[S]:
    """Have the disk ledger write through `storage` inside the block (a test's shim)."""
    _ACTIVE.append(storage)
    try:
        yield storage
    finally:
        _ACTIVE.remove(storage)


class Crash(BaseException):
    """The process dying at a storage operation. A BaseException, so no `except Exception`
    sees it: nothing of the program runs after it, as after a kill."""


@dataclass(frozen=True)
class Op:
    """One storage operation: what it was, on which path (a rename: its destination), and
    how many bytes it wrote (a write)."""

    name: Literal["write", "fsync", "rename", "fsync_dir"]
    path: str
    size: int = 0


class FaultyStorage(Storage):
    """The OS's calls, counted; operation number `at` (from 0) suffers `fault` once.

    With `at=None` nothing fails: a run's `ops` then list every fault point it has. `seed`
    draws how many bytes a torn or short write lands (from 0 to all but one)."""

    def __init__(self, at: int | None = None, fault: Fault = "crash", seed: int = 0) -> None:
        self.at = at
        self.fault = fault
        self.ops: list[Op] = []
        self.fired: Op | None = None
        """The operation the fault hit, once it has."""
        self._rng = random.Random(seed)

    def _point(self, op: Op) -> Fault | None:
        self.ops.append(op)
        if len(self.ops) - 1 != self.at:
            return None
        self.fired = op
        return self.fault

    def _raise(self, fault: Fault, op: Op) -> NoReturn:
        if fault in ("torn", "crash"):
            raise Crash(f"{fault} at {op.name} {op.path}")
        code = errno.ENOSPC if fault == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code), op.path)

    def write(self, file: BinaryIO, data: bytes) -> None:
        op = Op("write", str(file.name), len(data))
        fault = self._point(op)
        if fault is None or fault == "crash":
            super().write(file, data)
        elif fault in ("enospc", "torn"):
            super().write(file, data[: self._rng.randrange(len(data))] if data else b"")
        if fault is not None:
            self._raise(fault, op)

    def _other(self, op: Op, action: Callable[[], None]) -> None:
        fault = self._point(op)
        if fault is None or fault == "crash":
            action()
        if fault is not None:
            self._raise(fault, op)

    def fsync(self, file: BinaryIO) -> None:
        self._other(Op("fsync", str(file.name)), lambda: super(FaultyStorage, self).fsync(file))

    def rename(self, src: Path, dst: Path) -> None:
        self._other(Op("rename", str(dst)), lambda: super(FaultyStorage, self).rename(src, dst))

    def fsync_dir(self, path: Path) -> None:
        self._other(Op("fsync_dir", str(path)), lambda: super(FaultyStorage, self).fsync_dir(path))
