"""The embedded on-disk ledger: Arrow IPC segments plus a hash-chained manifest.

Layout of a ledger directory:
  seg-<first seq>.arrow  one committed batch of whole transactions (Arrow IPC file, lz4)
  chain.jsonl            one line per committed batch: its segment, seq range, digest, link

A segment stores the table in `schema.BASE_SCHEMA`, the layout of every ledger before economies,
plus each optional column group (`schema.OPTIONAL`: the economy's, the observations) from the
first segment that uses it on, its `schema.DICTIONARY` strings dictionary-encoded (plain in
segments written before the encoding). `scan` reads every layout (the missing columns null,
the strings as strings); `chunks(..., categories=True)` gives the strings as categories.

A batch is committed when its manifest line is written, after its segment is in place
(written to a temporary name, synced, renamed). A run killed at any moment therefore leaves
every committed batch intact; whatever was not committed (a segment with no manifest line, a
half-written line) is a torn tail: reported on open, and set aside under `torn/` before the
next commit so the sequence continues from the last committed event.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
from pydantic import BaseModel, ConfigDict, ValidationError

from ledger import chain, merkle, schema, storage
from ledger.batch import EventBatch, table_of
from ledger.errors import CorruptLedger
from ledger.signing import Signer
from ledger.store import Ledger, dictionary_as, items_since
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
    signature: str | None = None
    """The tree head after this batch, signed (`ledger.signing`), when the run had a key."""

    def line(self) -> str:
        """The manifest line (a field that is None is left out: unsigned lines read as
        every ledger before signatures wrote them)."""
        return self.model_dump_json(exclude_none=True) + "\n"


class DiskLedger(Ledger):
    """A ledger in a directory of Arrow IPC segments; every batch is hash-chained."""

    def __init__(self, path: Path | str, *, batch_events: int = DEFAULT_BATCH_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.batch_events = batch_events
        self._links, self.torn_tail = _read_manifest(self.path)
        self._staged: list[Transaction | EventBatch] = []
        self._staged_events = 0
        self._committing: Future[None] | None = None
        """The commit in flight on the writer thread, if any (`_hand_off`)."""
        self._handed: list[Transaction | EventBatch] = []
        """What that commit holds: staged again if it fails."""
        self._writer: ThreadPoolExecutor | None = None
        self._verified = not self.links
        self._group_from: dict[str, int] = {}
        """Per optional column group stored, the index of the first link whose segment
        stores it."""
        self._layout_read = not self.links
        if self._links:
            self.next_seq = self._links[-1].last_seq + 1
        self._tree: merkle.Tree | None = None
        self.signer: Signer | None = None
        """Signs the tree head after each commit, when set."""

    @property
    def accounts(self) -> frozenset[str]:
        """The accounts opened so far; reading them first checks the stored chain."""
        self._load()
        return self._accounts

    @property
    def closed(self) -> frozenset[str]:
        """The accounts closed so far; reading them first checks the stored chain."""
        self._load()
        return self._closed

    def _load(self) -> None:
        """Check the stored chain and read which accounts it opened and closed (once)."""
        if self._verified:
            return
        self.check_chain()
        lifecycle = pl.col("kind").is_in(["open", "close"])
        rows = self.scan().filter(lifecycle).select("kind", "account").collect(engine="streaming")
        self._accounts = frozenset(rows.filter(kind="open")["account"].to_list())
        self._closed = frozenset(rows.filter(kind="close")["account"].to_list())
        self._verified = True

    @classmethod
    def open_existing(cls, path: Path | str) -> DiskLedger:
        """Open a ledger that must already exist (for reading or continuing)."""
        if not (Path(path) / MANIFEST).is_file():
            raise CorruptLedger(f"{path}: no ledger here (missing {MANIFEST})")
        return cls(path)

    @property
    def links(self) -> list[Link]:
        """The committed batches, in order (once the commit in flight, if any, has landed)."""
        self.wait()
        return self._links

    @property
    def committed(self) -> int:
        """How many events are on disk, in committed segments (staged ones are not)."""
        return self.links[-1].last_seq + 1 if self.links else 0

    @property
    def head(self) -> str:
        """The root of the Merkle tree over every committed batch: the whole ledger's
        fingerprint, the head a user keeps (`tree_head` has its size too)."""
        return self.tree.head().root

    @property
    def tree(self) -> merkle.Tree:
        """The Merkle tree over the committed batches (built from the manifest once)."""
        self.wait()
        return self._tree_now()

    def _tree_now(self) -> merkle.Tree:
        if self._tree is None:
            self._tree = merkle.Tree()
            for link in self._links:
                self._tree.append(link.digest, link.first_seq, link.last_seq)
        return self._tree

    def vouched(self, head: str) -> int | None:
        """How many events `head` vouches for: the tree's root at some size, or (as
        summaries before Merkle heads recorded it) a chain link; None if neither."""
        for link, tree_head in zip(self.links, self.tree.heads(), strict=True):
            if head in (tree_head.root, link.link):
                return tree_head.events
        return None

    def _stage(self, item: Transaction | EventBatch) -> None:
        if isinstance(item, EventBatch):
            # Segments close after the transaction that reaches `batch_events`, wherever
            # it sits in a batch, so both kernels write the same segments.
            end = item.boundary_after(self.batch_events - self._staged_events)
            while end < len(item):
                head, item = item.split(end)
                self._staged.append(head)
                self._staged_events += len(head)
                try:
                    self._hand_off()
                except BaseException:  # the rest stays staged too, for a retry to commit
                    self._staged.append(item)
                    self._staged_events += len(item)
                    raise
                end = item.boundary_after(self.batch_events)
        self._staged.append(item)
        self._staged_events += len(item)
        if self._staged_events >= self.batch_events:
            self._hand_off()

    def flush(self) -> None:
        """Commit every staged transaction; on return every appended event is committed."""
        self._hand_off()
        self.wait()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def _hand_off(self) -> None:
        """Commit the staged transactions as one segment: the table is made here, then
        encoded, hashed, written, synced and committed on the writer thread while the run
        goes on. One commit is in flight at most, so segments land in order; the one before
        lands first, and its failure is raised here with its events staged again.

        Speed: encoding, hashing and syncing hold no GIL, so the kernel runs beside them on
        the machine's second core (docs/engine.md, "Writing a segment")."""
        if not self._staged:
            return
        table = table_of(self._staged)
        self.wait()
        if self.torn_tail:
            self._set_aside_torn()
        groups = self._groups_from()
        for group in schema.uses(table) - groups.keys():
            groups[group] = len(self._links)
        groups.setdefault(schema.ENCODED, len(self._links))  # from here on, all encoded
        stored = schema.stored(table, frozenset(groups))
        first = self._staged[0].first_seq
        last = first + self._staged_events - 1
        self._handed, self._staged, self._staged_events = self._staged, [], 0
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-commit")
        self._committing = self._writer.submit(self._write, stored, first, last)

    def wait(self) -> None:
        """Wait for the commit in flight, if any, to land (nothing staged is committed); if
        it failed, stage its events again (before any staged since) and raise its error.
        Interrupted while waiting (Ctrl-C), the commit stays in flight, for the next wait."""
        pending = self._committing
        if pending is None:
            return
        failure = pending.exception()
        self._committing, handed, self._handed = None, self._handed, []
        if failure is not None:
            self._staged[:0] = handed
            self._staged_events += sum(len(item) for item in handed)
            raise failure

    def _write(self, table: pa.Table, first: int, last: int) -> None:
        """Encode, write, sync and commit one segment (on the writer thread)."""
        data = _encode(schema.encode(table))
        name = f"seg-{first:012d}.arrow"
        _write_atomic(self.path / name, data)
        self._commit(name, chain.digest(data), first, last)

    def _commit(self, name: str, d: str, first: int, last: int) -> None:
        """Write the manifest line that commits segment `name` (digest `d`): its chain link
        and, with a signer, the signed tree head it makes."""
        prev = self._links[-1].link if self._links else chain.GENESIS
        tree = self._tree_now()
        tree.append(d, first, last)
        try:
            signature = None if self.signer is None else self.signer.sign(tree.head())
            link = chain.link(prev, d, first, last)
            entry = Link(segment=name, first_seq=first, last_seq=last, digest=d, prev=prev,
                         link=link, signature=signature)  # fmt: skip
            if self._links or (self.path / MANIFEST).exists():
                with open(self.path / MANIFEST, "ab") as f:
                    storage.active().write(f, entry.line().encode())
                    storage.active().fsync(f)
            else:  # the first commit makes the manifest: whole and synced, or not at all
                _write_atomic(self.path / MANIFEST, entry.line().encode())
        except BaseException:
            self._tree = None  # rebuilt from the committed links when next asked
            # What this commit left (a segment, part of its line) is set aside by the next
            # one, which first rewrites the manifest to the committed lines: a retry (a
            # `with` block's close) must not append after half a line or repeat a whole one.
            self.torn_tail = self.torn_tail or [f"{name}: its commit failed, not committed"]
            raise
        self._links.append(entry)

    def scan(self) -> pl.LazyFrame:
        return self._scan(0)

    def chunks(
        self, events: int, columns: Sequence[str] | None = None, categories: bool = False
    ) -> Iterator[pl.DataFrame]:
        """Consecutive runs of whole segments of about `events` rows (a segment larger than
        that is sliced), read one run at a time: memory holds one chunk, not the ledger."""
        size, first = max(events, 1), 0
        while first < len(self.links):
            last, rows = first, 0
            while last < len(self.links) and (rows == 0 or rows + _rows(self.links[last]) <= size):
                rows += _rows(self.links[last])
                last += 1
            frame = self._scan(first, last, categories)
            whole = (frame.select(columns) if columns is not None else frame).collect()
            first = last
            for i in range(0, whole.height, size):
                yield whole.slice(i, size)

    def backwards(self, columns: Sequence[str]) -> Iterator[pl.DataFrame]:
        """One committed segment at a time, the last first."""
        for i in reversed(range(len(self.links))):
            yield self._scan(i, i + 1).select(columns).collect()

    def _groups_from(self) -> dict[str, int]:
        """Per optional column group stored, the index of the first link whose segment
        stores it; read from the segments once, lazily (after the audit has checked their
        hashes)."""
        if not self._layout_read:
            last = self.path / self.links[-1].segment
            for group in _groups_in(last):
                self._group_from[group] = _first_storing(self.path, self.links, group)
            self._layout_read = True
        return self._group_from

    def _scan(self, first: int, end: int | None = None, categories: bool = False) -> pl.LazyFrame:
        """The segments of links `first`, `first + 1`, ... (up to `end`) in `schema.SCHEMA`:
        one scan per run of segments in one layout, the groups they leave out as nulls, the
        `schema.DICTIONARY` columns as strings (as categories, with `categories`)."""
        end = len(self.links) if end is None else end
        groups = self._groups_from()
        cuts = sorted({first, end, *(i for i in groups.values() if first < i < end)})
        parts = []
        for a, b in itertools.pairwise(cuts):
            files = [str(self.path / link.segment) for link in self.links[a:b]]
            nulls = [_NULLS[g] for g in schema.OPTIONAL if groups.get(g, end) > a]
            frame = pl.scan_ipc(files, glob=False)
            if nulls:
                frame = frame.with_columns(*(c for n in nulls for c in n)).select(schema.COLUMNS)
            if categories != (groups.get(schema.ENCODED, end) <= a):  # cast to what is asked
                wanted = pl.Categorical if categories else pl.String
                frame = frame.with_columns(dictionary_as(wanted))
            parts.append(frame)
        if not parts:
            empty = pl.LazyFrame(pl.DataFrame(SCHEMA_EMPTY))
            return empty.with_columns(dictionary_as(pl.Categorical)) if categories else empty
        return pl.concat(parts) if len(parts) > 1 else parts[0]

    def _since(self, start: int) -> tuple[pl.LazyFrame | None, list[Transaction | EventBatch]]:
        first = next((i for i, link in enumerate(self.links) if link.last_seq >= start), None)
        stored = None if first is None else self._scan(first).filter(pl.col("seq") >= start)
        return stored, items_since(self._staged, start)

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
            check_link(entry, prev, data)
            prev = entry.link

    def _set_aside_torn(self) -> None:
        torn_dir = self.path / "torn"
        torn_dir.mkdir(exist_ok=True)
        manifest = self.path / MANIFEST
        raw = manifest.read_bytes() if manifest.exists() else b""
        tail = raw[raw.rfind(b"\n") + 1 :]
        if tail:
            with open(torn_dir / f"{MANIFEST}.tail", "ab") as f:
                storage.active().write(f, tail + b"\n")
        # The manifest first, so no whole line ever names a segment already moved (a line
        # can land whole in a commit that then failed: its fsync, say).
        text = "".join(link.line() for link in self.links).encode()
        if raw != text:
            _write_atomic(manifest, text)
        committed = {link.segment for link in self.links}
        for p in self.path.iterdir():
            if p.is_file() and p.name.startswith("seg-") and p.name not in committed:
                storage.active().rename(p, torn_dir / p.name)
        self.torn_tail = []


SCHEMA_EMPTY = schema.SCHEMA.empty_table()
_TYPES = pl.DataFrame(SCHEMA_EMPTY).schema
_NULLS = {
    group: [pl.lit(None, dtype=_TYPES[n]).alias(n) for n in cols]
    for group, cols in schema.OPTIONAL.items()
}
"""Per optional group, its columns as nulls (for a segment that leaves them out)."""


def read_segment(data: bytes) -> pl.DataFrame:
    """A segment's stored bytes as events in the whole ledger schema (an older layout's
    missing columns null, strings as strings)."""
    frame = pl.read_ipc(io.BytesIO(data))
    missing = [c for c in schema.COLUMNS if c not in frame.columns]
    if missing:
        frame = frame.with_columns(pl.lit(None, _TYPES[c]).alias(c) for c in missing)
    return frame.select(schema.COLUMNS).with_columns(dictionary_as(pl.String))


def _rows(link: Link) -> int:
    return link.last_seq - link.first_seq + 1


def _groups_in(segment: Path) -> list[str]:
    """The optional column groups a segment stores, and `schema.ENCODED` if it stores its
    string columns dictionary-encoded."""
    try:
        with pa.memory_map(str(segment)) as source:
            layout = ipc.open_file(source).schema
    except (OSError, pa.ArrowInvalid):
        raise CorruptLedger(f"{segment}: not a readable Arrow IPC segment") from None
    names = set(layout.names)
    groups = [g for g, cols in schema.OPTIONAL.items() if cols[0] in names]
    return [*groups, schema.ENCODED] if schema.encoded(layout) else groups


def _first_storing(path: Path, links: list[Link], group: str) -> int:
    """The index of the first link whose segment stores `group` (the last does): every
    later one does too (a store writes a group, and the encoding, from the first segment
    that has them on), so a bisection reads a few footers only."""
    lo, hi = 0, len(links) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if group in _groups_in(path / links[mid].segment):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=_WRITE_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    io = storage.active()
    with open(tmp, "wb") as f:
        io.write(f, data)
        io.fsync(f)
    io.rename(tmp, path)
    io.fsync_dir(path.parent)  # the new name itself survives a power cut


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


def check_link(entry: Link, prev: str, data: bytes) -> None:
    """Raise `CorruptLedger` unless a segment's stored bytes hash to its link's digest and
    the link follows `prev` (the link before it, `chain.GENESIS` for the first)."""
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
