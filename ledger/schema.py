"""The one-row-per-event table layout shared by every backend and by Polars readers.

The table is the union of every kind's fields; a field a kind does not have is null. Columns
that only some ledgers fill come last, in `OPTIONAL` groups: the economy's (a Bid's `cap`, a
Close's `reason`) and the observations (a Gymnasium task's `obs`). A store leaves out the
groups a ledger has not used, so that the table without them is exactly the one every earlier
ledger stores (`BASE_SCHEMA`), and a ledger without observations is stored as before they
existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ledger.events import EVENT_ADAPTER, FIELDS, KIND, LIFECYCLE_KINDS, Event
from ledger.transaction import HEADER, OWN, Transaction

_MODELS = tuple(FIELDS)
_CODE = {m: i for i, m in enumerate(_MODELS)}
KIND_NAMES = pa.array([KIND[m] for m in _MODELS], type=pa.string())
"""Each model's kind, in `FIELDS` order: a kind code's name (in a batch and here)."""

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
        ("action", pa.int64()),
        ("control", pa.float64()),
        ("x", pa.list_(pa.float64())),
        ("controls", pa.list_(pa.float64())),
        ("next_x", pa.list_(pa.float64())),
        ("cap", pa.int64()),
        ("reason", pa.string()),
        ("obs", pa.list_(pa.float32())),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
OPTIONAL: dict[str, tuple[str, ...]] = {
    "economy": ("cap", "reason"),
    "observations": ("obs",),
}
"""Column groups a ledger stores only from its first segment that uses them (`uses`), in
`SCHEMA`'s order: its last columns."""
ECONOMY_COLUMNS: tuple[str, ...] = OPTIONAL["economy"]
"""The columns only an economy's events fill."""
BASE_SCHEMA = pa.schema([f for f in SCHEMA if not any(f.name in g for g in OPTIONAL.values())])
"""The table without the optional groups: the layout of every ledger made before the
economy existed, kept byte for byte so their chain heads still verify."""
assert COLUMNS[len(BASE_SCHEMA) :] == tuple(c for g in OPTIONAL.values() for c in g)


def uses(table: pa.Table) -> frozenset[str]:
    """The `OPTIONAL` groups `table` (in `SCHEMA`) uses: a value in one of their columns, or
    for the economy, an event of a lifecycle kind."""
    used = {g for g, cols in OPTIONAL.items() if any(_filled(table, c) for c in cols)}
    if pc.any(pc.is_in(table["kind"], pa.array(sorted(LIFECYCLE_KINDS)))).as_py():
        used.add("economy")
    return frozenset(used)


def _filled(table: pa.Table, column: str) -> bool:
    return bool(table[column].null_count < table.num_rows)


DICTIONARY: tuple[str, ...] = ("run", "kind", "account", "src", "dst", "task", "mechanism")
"""String columns a segment stores dictionary-encoded: each value once, a small integer code
per row. Each holds a handful of values (a run's id, the kinds, the accounts, task and
mechanism names), so a segment is about two fifths smaller, and a reader that wants
categories gets them without decoding or hashing a string per row (docs/ledger.md)."""
ENCODED = "dictionary"
"""The layout name of segments that store `DICTIONARY` encoded (every segment written since
the encoding was introduced; earlier ones store plain strings)."""


def stored(table: pa.Table, groups: frozenset[str]) -> pa.Table:
    """`table` as a store keeps it: without the columns of the optional groups not in
    `groups` (all null). A segment also encodes it (`encode`)."""
    return table.drop_columns([c for g, cols in OPTIONAL.items() if g not in groups for c in cols])


_ENCODED_TYPE = pa.dictionary(pa.int32(), pa.string())
"""How a segment stores a `DICTIONARY` column."""


def encode(table: pa.Table) -> pa.Table:
    """`table` with its `DICTIONARY` columns dictionary-encoded, as a segment stores it.

    The columns share one dictionary, their values in order of first appearance (column by
    column in `DICTIONARY`'s order), made by one call. Speed: it runs on the ledger's writer
    thread beside a kernel that holds the GIL, and each call that releases the GIL waits
    up to a switch interval (5 ms) to take it back; encoding each column on its own made
    some 20 such calls a segment and slowed the run loop by 5% (docs/ledger.md)."""
    names = [f.name for f in table.schema if f.name in DICTIONARY]
    pieces = [chunk for name in names for chunk in table[name].chunks]
    shared = pc.dictionary_encode(pa.chunked_array(pieces, pa.string())).chunks
    encoded, at = {}, 0
    for name in names:
        width = table[name].num_chunks
        encoded[name] = pa.chunked_array(shared[at : at + width], _ENCODED_TYPE)
        at += width
    columns = [encoded.get(name, table[name]) for name in table.schema.names]
    return pa.table(columns, names=table.schema.names)


def encoded(schema: pa.Schema) -> bool:
    """Whether a segment of `schema` stores its `DICTIONARY` columns encoded."""
    return bool(pa.types.is_dictionary(schema.field("kind").type))


def to_table(txs: Sequence[Transaction]) -> pa.Table:
    """Transactions as an Arrow table in `SCHEMA`, one row per event, in order.

    Speed: headers are expanded with NumPy (one per transaction, not per event); events are
    grouped by kind with NumPy, each field's values taken at C level (`map(itemgetter(i))`,
    about a third of `zip(*rows)`'s cost on a segment's rows), then put back in order by
    one `take`. A row-by-row, column-by-column loop costs several times more.
    """
    if not txs:
        return SCHEMA.empty_table()
    sizes = np.fromiter(map(len, txs), dtype=np.int64, count=len(txs))
    headers = list(zip(*(t.header for t in txs), strict=True))
    firsts = np.asarray(headers[0], dtype=np.int64)
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    common = {"seq": pa.array(np.repeat(firsts, sizes) + offsets)}
    for name, per_tx in zip(HEADER, headers, strict=True):
        type_ = SCHEMA.field(name).type
        if type_ == pa.string():
            owner = pa.array(np.repeat(np.arange(len(txs)), sizes))
            common[name] = pa.array(per_tx, type=type_).take(owner)
        else:
            common[name] = pa.array(np.repeat(np.asarray(per_tx, type_.to_pandas_dtype()), sizes))
    body = [e for t in txs for e in t.body]
    models = list(map(itemgetter(0), body))
    values = list(map(itemgetter(1), body))
    codes = np.fromiter(map(_CODE.__getitem__, models), dtype=np.int64, count=len(models))
    parts, places = [], []
    for code in np.unique(codes):
        model = _MODELS[code]
        at = np.flatnonzero(codes == code)
        rows = itemgetter(*at.tolist())(values) if len(at) > 1 else [values[at[0]]]
        cols = {
            n: pa.array(list(map(itemgetter(i), rows)), type=SCHEMA.field(n).type)
            for i, n in enumerate(OWN[model])
        }
        parts.append(pa.table(cols))
        places.append(at)
    table = pa.concat_tables(parts, promote_options="default")
    back = np.empty(len(codes), dtype=np.int64)  # each event's row in the kinds' concatenation
    back[np.concatenate(places)] = np.arange(len(codes))
    table = table.take(back).append_column("kind", KIND_NAMES.take(codes))
    for name, column in common.items():
        table = table.append_column(name, column)
    return _conform(table)


def _conform(table: pa.Table) -> pa.Table:
    """`table` with every schema column, nulls where absent, in schema order."""
    n = table.num_rows
    cols = [
        table[f.name] if f.name in table.column_names else pa.nulls(n, type=f.type) for f in SCHEMA
    ]
    return pa.table(cols, schema=SCHEMA)


def from_rows(rows: Iterable[dict[str, Any]]) -> Iterator[Event]:
    """Typed events back from table rows (nulls dropped, every field validated)."""
    for row in rows:
        yield EVENT_ADAPTER.validate_python({k: v for k, v in row.items() if v is not None})


def from_table(table: pa.Table) -> Iterator[Event]:
    """Typed events back from an Arrow table in `SCHEMA`."""
    for batch in table.to_batches():
        yield from from_rows(batch.to_pylist())
