"""The embedded on-disk ledger: Arrow IPC segments plus a hash-chained manifest.

Layout of a ledger directory:
  seg-<first seq>.arrow  one committed batch of whole transactions (Arrow IPC file, lz4)
  chain.jsonl            one line per committed batch: its segment, seq range, digest, link

A batch is committed when its manifest line is written, after its segment is in place
(written to a temporary name, synced, renamed). A run killed at any moment therefore leaves
every committed batch intact; whatever was not committed (a segment with no manifest line, a
half-written line) is a torn tail: reported on open, and set aside under `torn/` before the
next commit so the sequence continues from the last committed event.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
from pydantic import BaseModel, ConfigDict, ValidationError

from ledger import chain, schema
from ledger.batch import EventBatch, table_of
from ledger.errors import CorruptLedger
from ledger.store import Ledger
from ledger.transaction import Transaction

MANIFEST = "chain.jsonl"
DEFAULT_BATCH_EVENTS = 65_536
_WRITE_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


class Link(BaseModel):
    """One committed batch as the manifest records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segment: str
    first_seq: int
    last_seq: int
    digest: str
    prev: str
    link: str


class DiskLedger(Ledger):
    """A ledger in a directory of Arrow IPC segments; every batch is hash-chained."""

    def __init__(self, path: Path | str, *, batch_events: int = DEFAULT_BATCH_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.batch_events = batch_events
        self.links, self.torn_tail = _read_manifest(self.path)
        self._staged: list[Transaction | EventBatch] = []
        self._staged_events = 0
        self._verified = not self.links
        if self.links:
            self.next_seq = self.links[-1].last_seq + 1

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts opened so far; reading them first checks the stored chain."""
        if not self._verified:
            self.check_chain()
            opened = self.scan().filter(pl.col("kind") == "open").select("account").collect()
            self._accounts = frozenset(opened["account"].to_list())
            self._verified = True
        return self._accounts

    @classmethod
    def open_existing(cls, path: Path | str) -> DiskLedger:
        """Open a ledger that must already exist (for reading or continuing)."""
        if not (Path(path) / MANIFEST).is_file():
            raise CorruptLedger(f"{path}: no ledger here (missing {MANIFEST})")
        return cls(path)

    @property
    def head(self) -> str:
        """The link of the last committed batch (the whole ledger's fingerprint)."""
        return self.links[-1].link if self.links else chain.GENESIS

    def _stage(self, item: Transaction | EventBatch) -> None:
        if isinstance(item, EventBatch):
            # Segments close after the transaction that reaches `batch_events`, wherever
            # it sits in a batch, so both kernels write the same segments.
            end = item.boundary_after(self.batch_events - self._staged_events)
            while end < len(item):
                head, item = item.split(end)
                self._staged.append(head)
                self._staged_events += len(head)
                self.flush()
                end = item.boundary_after(self.batch_events)
        self._staged.append(item)
        self._staged_events += len(item)
        if self._staged_events >= self.batch_events:
            self.flush()

    def flush(self) -> None:
        if not self._staged:
            return
        if self.torn_tail:
            self._set_aside_torn()
        data = _encode(table_of(self._staged))
        first = self._staged[0].first_seq
        last = first + self._staged_events - 1
        name = f"seg-{first:012d}.arrow"
        _write_atomic(self.path / name, data)
        d = chain.digest(data)
        entry = Link(
            segment=name,
            first_seq=first,
            last_seq=last,
            digest=d,
            prev=self.head,
            link=chain.link(self.head, d, first, last),
        )
        with open(self.path / MANIFEST, "a", encoding="utf-8") as f:
            f.write(entry.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.links.append(entry)
        self._staged.clear()
        self._staged_events = 0

    def scan(self) -> pl.LazyFrame:
        paths = [str(self.path / link.segment) for link in self.links]
        if not paths:
            return pl.LazyFrame(pl.DataFrame(SCHEMA_EMPTY))
        return pl.scan_ipc(paths, glob=False)

    def check_chain(self) -> None:
        """Re-hash every committed segment and re-derive the chain; raise on the first break."""
        prev = chain.GENESIS
        for entry in self.links:
            try:
                data = (self.path / entry.segment).read_bytes()
            except OSError as e:
                raise CorruptLedger(
                    f"{entry.segment}: cannot read ({e.strerror})", entry.first_seq
                ) from None
            found = chain.digest(data)
            if found != entry.digest:
                raise CorruptLedger(
                    f"{entry.segment} (seq {entry.first_seq}-{entry.last_seq}): stored bytes "
                    f"hash to {found[:12]}, chain recorded {entry.digest[:12]}",
                    entry.first_seq,
                )
            expected = chain.link(prev, found, entry.first_seq, entry.last_seq)
            if entry.prev != prev or entry.link != expected:
                raise CorruptLedger(
                    f"{entry.segment}: hash chain broken at seq {entry.first_seq}", entry.first_seq
                )
            prev = entry.link

    def _set_aside_torn(self) -> None:
        torn_dir = self.path / "torn"
        torn_dir.mkdir(exist_ok=True)
        raw = (self.path / MANIFEST).read_bytes()
        tail = raw[raw.rfind(b"\n") + 1 :]
        if tail:
            with open(torn_dir / f"{MANIFEST}.tail", "ab") as f:
                f.write(tail + b"\n")
        committed = {link.segment for link in self.links}
        for p in self.path.iterdir():
            if p.is_file() and p.name.startswith("seg-") and p.name not in committed:
                p.rename(torn_dir / p.name)
        text = "".join(link.model_dump_json() + "\n" for link in self.links)
        _write_atomic(self.path / MANIFEST, text.encode())
        self.torn_tail = []


SCHEMA_EMPTY = schema.SCHEMA.empty_table()


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_manifest(path: Path) -> tuple[list[Link], list[str]]:
    """Committed links and a description of any torn tail (uncommitted leftovers)."""
    manifest = path / MANIFEST
    raw = manifest.read_bytes() if manifest.exists() else b""
    lines = raw.split(b"\n")
    torn: list[str] = []
    if lines[-1]:
        torn.append(f"{MANIFEST}: a half-written last line ({len(lines[-1])} bytes) ignored")
    links: list[Link] = []
    for i, line in enumerate(lines[:-1]):
        try:
            links.append(Link.model_validate(json.loads(line)))
        except (ValueError, ValidationError):
            raise CorruptLedger(f"{manifest}: line {i + 1} is not a chain record") from None
    for prev, entry in itertools.pairwise(links):
        if entry.first_seq != prev.last_seq + 1:
            raise CorruptLedger(f"{manifest}: batch {entry.segment} does not follow {prev.segment}")
    committed = {link.segment for link in links}
    for p in sorted(path.glob("seg-*")):
        if p.name not in committed:
            torn.append(f"{p.name}: written but never committed, ignored")
    for link in links:
        if not (path / link.segment).is_file():
            raise CorruptLedger(f"{path / link.segment}: committed segment is missing")
    return links, torn
