"""The one-row-per-event table layout shared by every backend and by Polars readers.

The table is the union of every kind's fields; a field a kind does not have is null.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from ledger.events import EVENT_ADAPTER, Event, EventBase

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("tx", pa.int64()),
        ("run", pa.string()),
        ("kind", pa.string()),
        ("episode", pa.int64()),
        ("step", pa.int64()),
        ("time", pa.float64()),
        ("account", pa.string()),
        ("src", pa.string()),
        ("dst", pa.string()),
        ("amount", pa.int64()),
        ("primitive", pa.int64()),
        ("state", pa.int64()),
        ("next_state", pa.int64()),
        ("duration", pa.float64()),
        ("done", pa.bool_()),
        ("task", pa.string()),
        ("mechanism", pa.string()),
        ("cloned", pa.bool_()),
        ("gamma", pa.float64()),
        ("steps", pa.int64()),
        ("episode_return", pa.int64()),
        ("episodes", pa.int64()),
        ("seed", pa.int64()),
        ("config", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


def to_table(events: Sequence[EventBase]) -> pa.Table:
    """Events as an Arrow table in `SCHEMA`, one row per event, in the given order."""
    dicts = [e.__dict__ for e in events]
    return pa.table(
        [pa.array([d.get(c) for d in dicts], type=f.type) for c, f in zip(COLUMNS, SCHEMA)],
        schema=SCHEMA,
    )


def from_rows(rows: Iterable[dict[str, Any]]) -> Iterator[Event]:
    """Typed events back from table rows (nulls dropped, every field validated)."""
    for row in rows:
        yield EVENT_ADAPTER.validate_python({k: v for k, v in row.items() if v is not None})


def from_table(table: pa.Table) -> Iterator[Event]:
    """Typed events back from an Arrow table in `SCHEMA`."""
    for batch in table.to_batches():
        yield from from_rows(batch.to_pylist())
