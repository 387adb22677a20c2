"""Many whole transactions as columns: the form the round kernel writes and learners fold.

An `EventBatch` is rows of the ledger table (`schema.SCHEMA`) held as NumPy columns: `kind`
is an index into `MODELS`, string columns hold codes into the batch's `strings`, and a field
a kind does not have is ignored (stored as null). A field a kind may leave null row by row
(a Bid's `cap`) is a `NULLABLE` column: a batch may omit it (all null), and holds -1 for null
where it has it. A vector column (the control variant's states and joint controls) is a 2-D
array, one row per event and one width per batch; it is absent when no event of the batch
carries it, and an `OPTIONAL_VECTORS` one (a task's observations) may be absent anyway (all
null). A batch is a run of whole transactions (each starts at a row whose `seq` equals
its `tx`); `check_batch` validates all of it with array operations, and a ledger takes the
batch whole or rejects it whole.

Speed: a round of K concurrent auctions is a few hundred rows; building, checking and
folding them as arrays costs a fixed few hundred microseconds per round instead of Python
work per event (docs/engine.md, "The round kernel").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from ledger import schema
from ledger.errors import (
    AccountClosed,
    InvalidEvent,
    SequenceError,
    UnbalancedTransaction,
    UnknownAccount,
)
from ledger.events import FIELDS, KIND, Balance, Close, EventBase, Open, Pay
from ledger.transaction import HEADER, OWN, TRANSFER_TYPES, Body, Transaction

MODELS: tuple[type[EventBase], ...] = tuple(FIELDS)
"""The event models, indexed by a batch's `kind` codes."""
CODE: dict[type[EventBase], int] = {m: i for i, m in enumerate(MODELS)}
STRING_COLUMNS = frozenset(
    f.name for f in schema.SCHEMA if f.type == pa.string() and f.name != "kind"
)
LIST_COLUMNS = frozenset(f.name for f in schema.SCHEMA if pa.types.is_list(f.type))
"""Vector columns (the control variant's states), held in `EventBatch.vectors`."""
_OPTIONAL = frozenset(
    name
    for m in FIELDS
    for name, f in m.model_fields.items()
    if name != "kind" and not f.is_required()
)
"""The fields an event may leave null (a Bid's `cap`, a task's observation)."""
OPTIONAL_VECTORS = _OPTIONAL & LIST_COLUMNS
"""Vector columns a batch may omit (all null): only some tasks observe their states."""
NULLABLE = _OPTIONAL - LIST_COLUMNS
"""Columns a batch may omit (all null) and holds -1 for null in (their values are >= 0)."""
COLUMNS = tuple(
    n for n in schema.COLUMNS if n != "kind" and n not in LIST_COLUMNS and n not in NULLABLE
)
"""The columns a batch holds besides `kind` (and any `NULLABLE` ones)."""
_HAS = {name: np.array([name in FIELDS[m] for m in MODELS], dtype=bool) for name in schema.COLUMNS}
"""Per column, which kinds carry it (the others store null)."""
IS_TRANSFER = np.array([m in TRANSFER_TYPES for m in MODELS], dtype=bool)
_OPENS_OR_CLOSES = np.array([m in (Open, Close) for m in MODELS], dtype=bool)
_STATEMENT = np.array([m is Balance for m in MODELS], dtype=bool)
"""The kind that may name a closed account (a statement; `transaction.ADDRESS_AT`)."""
_ADDRESS = ("account", "src", "dst")
"""The columns that name who an event is addressed to (`events.accounts_of`)."""
_NUMPY_TYPE = {
    pa.int64(): np.int64,
    pa.float64(): np.float64,
    pa.float32(): np.float32,
    pa.bool_(): np.bool_,
}


@dataclass(frozen=True)
class EventBatch:
    """Rows of whole transactions as columns (see the module docstring)."""

    kind: NDArray[np.int8]
    columns: Mapping[str, NDArray[Any]]
    strings: tuple[str, ...]
    vectors: Mapping[str, NDArray[np.floating[Any]]] = dataclass_field(default_factory=dict)
    """Vector columns, (rows, width) each; rows of kinds without the field are ignored."""

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def first_seq(self) -> int:
        """The sequence number of the first row."""
        return int(self.columns["seq"][0])

    def canonical(self) -> EventBatch:
        """This batch with one code per distinct string (codes compare as the strings do)."""
        if len(set(self.strings)) == len(self.strings):
            return self
        table = {v: i for i, v in reversed(list(enumerate(self.strings)))}
        to = np.array([table[v] for v in self.strings], dtype=np.int64)
        cols = {n: to[v] if n in STRING_COLUMNS else v for n, v in self.columns.items()}
        return EventBatch(self.kind, cols, self.strings, self.vectors)

    def string_codes(self, names: Iterable[str]) -> NDArray[np.bool_]:
        """A mask over `strings`: which of them are in `names`."""
        wanted = set(names)
        return np.fromiter((s in wanted for s in self.strings), dtype=bool, count=len(self.strings))

    def split(self, row: int) -> tuple[EventBatch, EventBatch]:
        """The rows before `row` and from `row` on (split at a transaction's first row)."""
        return self.rows(slice(None, row)), self.rows(slice(row, None))

    def rows(self, which: slice | NDArray[Any]) -> EventBatch:
        """The rows `which` selects (a slice, indices or a mask), in order.

        Unless they are whole transactions (a split), the result is a view for reading, not
        something a ledger takes.
        """
        return EventBatch(
            self.kind[which], _Taken(self.columns, which), self.strings, _Taken(self.vectors, which)
        )

    def addressed_to(self, account: str) -> EventBatch:
        """The rows addressed to `account` (as its account, payer or payee), in order."""
        try:
            code = self.strings.index(account)
        except ValueError:
            return self.rows(slice(0, 0))
        wanted = np.zeros(len(self), dtype=bool)
        batch = self.canonical() if self.strings.count(account) > 1 else self
        for name in _ADDRESS:
            wanted |= (batch.columns[name] == code) & _HAS[name][self.kind]
        return batch.rows(wanted)

    def boundary_after(self, count: int) -> int:
        """The end row of the first transaction whose last row is at or past `count` rows
        (the batch's length if there is none): where a segment of `count` rows closes."""
        starts = np.flatnonzero(self.columns["seq"] == self.columns["tx"])
        later = starts[starts >= count]
        return int(later[0]) if later.size else len(self)

    def to_table(self) -> pa.Table:
        """The rows as an Arrow table in `schema.SCHEMA` (nulls where a kind has no field).

        Speed: which rows carry a field is looked up once per set of kinds that carry it
        (`_Carried`); a string column with one value is laid out directly, not taken from
        the batch's strings row by row; a masked column's validity is packed by NumPy and
        handed to Arrow with its values, not converted from a mask. 10.9 ms -> 6.2 ms per
        65,536-event segment of a Chain run, the same bytes (docs/engine.md, "Writing a
        segment").
        """
        names = pa.array(self.strings, type=pa.string())
        carried = _Carried(self.kind)
        arrays: list[pa.Array] = []
        for field in schema.SCHEMA:
            if field.name == "kind":
                arrays.append(schema.KIND_NAMES.take(pa.array(self.kind)))
                continue
            if field.name in LIST_COLUMNS:
                arrays.append(self._list_array(field.name, field.type))
                continue
            values = self.columns.get(field.name)
            if values is None:  # an omitted NULLABLE column
                arrays.append(pa.nulls(len(self), type=field.type))
                continue
            valid = carried(field.name)
            if field.name in NULLABLE and valid is not _NONE:
                valid = (values >= 0) if valid is None else valid & (values >= 0)
                valid = None if valid.all() else valid if valid.any() else _NONE
            if valid is _NONE:
                arrays.append(pa.nulls(len(self), type=field.type))
            elif field.name in STRING_COLUMNS:
                arrays.append(_strings(names, values, valid))
            elif valid is None:
                arrays.append(pa.array(values, type=field.type))
            else:
                zeroed = np.where(valid, values, np.zeros((), dtype=values.dtype))
                arrays.append(_masked(zeroed, valid, field.type))
        return pa.table(arrays, schema=schema.SCHEMA)

    def _list_array(self, name: str, type_: pa.DataType) -> pa.Array:
        """Vector column `name` as a list array (null where a kind has no such field)."""
        valid = _HAS[name][self.kind]
        if not valid.any() or name not in self.vectors:
            return pa.nulls(len(self), type=type_)
        values = self.vectors[name][valid]
        width = values.shape[1]
        offsets = np.zeros(len(self) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(valid * width)
        mask = None if valid.all() else pa.array(~valid)
        flat = pa.array(values.ravel(), type=type_.value_type)
        return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=mask)

    def _python_columns(self) -> dict[str, list[Any]]:
        """Every column as a Python list (strings decoded, vectors as lists, nulls None)."""
        cols = {
            n: [self.strings[c] for c in v.tolist()] if n in STRING_COLUMNS else v.tolist()
            for n, v in self.columns.items()
            if n not in NULLABLE
        }
        for n in NULLABLE:
            held = self.columns.get(n)
            cols[n] = [None] * len(self) if held is None else [x if x >= 0 else None for x in held]
        absent = {n: [None] * len(self) for n in OPTIONAL_VECTORS if n not in self.vectors}
        return cols | absent | {n: v.tolist() for n, v in self.vectors.items()}

    def events(self) -> list[EventBase]:
        """Every row as its typed event, validated; for any rows (a view too), in order."""
        cols = self._python_columns()
        out: list[EventBase] = []
        for i, code in enumerate(self.kind.tolist()):
            model = MODELS[code]
            names = ("seq", *HEADER, *OWN[model])
            out.append(model.model_validate({n: cols[n][i] for n in names}))
        return out

    def transactions(self) -> list[Transaction]:
        """The rows as compact transactions (for subscribers that fold one at a time).

        Speed: Python work per event; batch-aware subscribers read the columns instead.
        """
        cols = self._python_columns()
        starts = np.flatnonzero(self.columns["seq"] == self.columns["tx"]).tolist()
        out: list[Transaction] = []
        for a, b in zip(starts, [*starts[1:], len(self)], strict=True):
            header = tuple(cols[h][a] for h in HEADER)
            body: list[Body] = []
            for i in range(a, b):
                model = MODELS[int(self.kind[i])]
                body.append((model, tuple(cols[n][i] for n in OWN[model])))
            out.append(Transaction(header, body))
        return out


class _Taken(Mapping[str, NDArray[Any]]):
    """Columns of selected rows, each selected when first read.

    Speed: a subscriber reads a few of a view's columns; the bus makes a view per account
    and batch, so selecting all of them up front would cost more than the subscriber's work.
    """

    def __init__(self, source: Mapping[str, NDArray[Any]], which: slice | NDArray[Any]) -> None:
        self._source, self._which = source, which
        self._taken: dict[str, NDArray[Any]] = {}

    def __getitem__(self, name: str) -> NDArray[Any]:
        if name not in self._taken:
            self._taken[name] = self._source[name][self._which]
        return self._taken[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


class Grid:
    """Whole transactions laid out as a grid, the way the array kernels build them: one row
    per transaction, one column per place an event may take (its kind fixed by the place),
    each cell present or not. Events are the present cells in row-major order, numbered
    from `first_seq`; a transaction is one row's present cells."""

    def __init__(self, present: NDArray[np.bool_], first_seq: int) -> None:
        self.shape = present.shape
        self._flat = np.flatnonzero(present.ravel())
        self.row, self.place = np.divmod(self._flat, present.shape[1])
        """Each event's row (its transaction) and place."""
        sizes = present.sum(axis=1)
        self._firsts = first_seq + np.cumsum(sizes) - sizes
        self.first_seq, self.events = first_seq, len(self._flat)

    def cells(self, dtype: type[Any] = np.int64) -> NDArray[Any]:
        """A grid of zeros to fill with one value per cell."""
        return np.zeros(self.shape, dtype=dtype)

    def of_cells(self, values: NDArray[Any]) -> NDArray[Any]:
        """A column from a grid of per-cell values (the present cells' ones)."""
        return values.ravel()[self._flat]

    def of_rows(self, values: NDArray[Any]) -> NDArray[Any]:
        """A column from per-row values (each event takes its transaction's)."""
        return values[self.row]

    def constant(self, value: Any, dtype: type[Any] | None = None) -> NDArray[Any]:
        """A column of one value."""
        return np.full(self.events, value, dtype=dtype)

    def batch(
        self,
        kinds: NDArray[np.int8],
        columns: Mapping[str, NDArray[Any]],
        strings: tuple[str, ...],
        vectors: Mapping[str, NDArray[np.floating[Any]]] | None = None,
    ) -> EventBatch:
        """The batch of these events: `kinds` by place, `columns` per event (`seq` and `tx`
        are the grid's own; a column not given is zeros, stored as null)."""
        cols: dict[str, NDArray[Any]] = {
            "seq": np.arange(self.first_seq, self.first_seq + self.events, dtype=np.int64),
            "tx": self._firsts[self.row],
            **columns,
        }
        for name in COLUMNS:
            if name not in cols:
                cols[name] = np.zeros(self.events, dtype=numpy_type(name))
        return EventBatch(kinds[self.place], cols, strings, vectors or {})


def of_transactions(txs: Sequence[Transaction]) -> EventBatch:
    """Transactions as one batch (the inverse of `EventBatch.transactions`)."""
    table = schema.to_table(txs)
    strings: dict[str, int] = {}
    columns: dict[str, NDArray[Any]] = {}
    for name in COLUMNS:
        values = table[name].to_pylist()
        if name in STRING_COLUMNS:
            codes = [strings.setdefault(v, len(strings)) if v is not None else 0 for v in values]
            columns[name] = np.array(codes, dtype=np.int64)
        else:
            zero = numpy_type(name)()
            columns[name] = np.array([zero if v is None else v for v in values], numpy_type(name))
    for name in sorted(NULLABLE):
        if table[name].null_count < table.num_rows:
            values = table[name].to_pylist()
            columns[name] = np.array([-1 if v is None else v for v in values], numpy_type(name))
    vectors: dict[str, NDArray[np.floating[Any]]] = {}
    for name in sorted(LIST_COLUMNS):
        lists = table[name].to_pylist()
        widths = {len(v) for v in lists if v is not None}
        if len(widths) > 1:
            raise ValueError(f"a batch holds one width per vector column; {name} has {widths}")
        if widths:
            (width,) = widths
            dtype = _NUMPY_TYPE[schema.SCHEMA.field(name).type.value_type]
            vectors[name] = np.array(
                [[0.0] * width if v is None else v for v in lists], dtype=dtype
            ).reshape(len(lists), width)
    kind = {k: CODE[m] for m, k in KIND.items()}
    kinds = np.array([kind[k] for k in table["kind"].to_pylist()], dtype=np.int8)
    return EventBatch(kinds, columns, tuple(strings) or ("",), vectors)


def concat(batches: Sequence[EventBatch]) -> EventBatch:
    """Consecutive batches as one (string codes re-mapped onto one table if they differ)."""
    if not batches:
        raise ValueError("no batches to concatenate")
    if len(batches) == 1:
        return batches[0]
    strings = batches[0].strings
    if any(b.strings != strings for b in batches):
        table: dict[str, int] = {}
        for b in batches:
            for s in b.strings:
                table.setdefault(s, len(table))
        remapped = []
        for b in batches:
            to = np.array([table[s] for s in b.strings], dtype=np.int64)
            cols = {n: to[v] if n in STRING_COLUMNS else v for n, v in b.columns.items()}
            remapped.append(EventBatch(b.kind, cols, tuple(table), b.vectors))
        batches, strings = remapped, tuple(table)
    vectors = {}
    for name in sorted({n for b in batches for n in b.vectors}):
        widths = {b.vectors[name].shape[1] for b in batches if name in b.vectors}
        if len(widths) > 1:
            raise ValueError(f"a batch holds one width per vector column; {name} has {widths}")
        if name in OPTIONAL_VECTORS and any(
            name not in b.vectors and _HAS[name][b.kind].any() for b in batches
        ):
            raise ValueError(f"batches with and without their {name} vector cannot be one")
        (width,) = widths
        vectors[name] = np.concatenate(
            [b.vectors.get(name, np.zeros((len(b), width))) for b in batches]
        )
    columns = {n: np.concatenate([b.columns[n] for b in batches]) for n in COLUMNS}
    for name in sorted(NULLABLE):
        if any(name in b.columns for b in batches):
            nulls = [np.full(len(b), -1, dtype=numpy_type(name)) for b in batches]
            columns[name] = np.concatenate(
                [b.columns.get(name, n) for b, n in zip(batches, nulls, strict=True)]
            )
    return EventBatch(np.concatenate([b.kind for b in batches]), columns, strings, vectors)


def check_batch(
    batch: EventBatch,
    next_seq: int,
    accounts: frozenset[str],
    closed: frozenset[str] = frozenset(),
) -> None:
    """Validate `batch` whole against the ledger head, with array operations.

    The rules of `transaction.check`, column-wise: contiguous sequence numbers from
    `next_seq`; rows grouped in whole transactions that share their header; every transfer a
    non-negative int64 amount between opened accounts, only a `Pay` to itself; no event but
    a `Balance` statement addressed to a `closed` account. A batch opens and closes no
    account (append an `Open` or `Close` transaction). Rules are checked in that order, each
    over the whole batch, so with several faults the error names the first fault of the
    first rule broken (not necessarily the earliest faulty event).
    """
    batch = batch.canonical()
    if len(batch) == 0:
        raise SequenceError("empty batch")
    _check_sequence(batch, next_seq)
    _check_transactions(batch)
    _check_vectors(batch)
    if closed:
        _check_not_closed(batch, closed)
    _check_transfers(batch, accounts)


def _check_sequence(batch: EventBatch, next_seq: int) -> None:
    """Sequence numbers run on from `next_seq`, one per row."""
    seq, n = batch.columns["seq"], len(batch)
    first = int(seq[0])
    if first != next_seq:
        what = "duplicate" if first < next_seq else "out-of-order"
        raise SequenceError(f"{what} sequence number {first}: expected {next_seq}")
    off = np.flatnonzero(seq != np.arange(next_seq, next_seq + n))
    if off.size:
        i = int(off[0])
        raise SequenceError(f"out-of-order sequence number {int(seq[i])}: expected {next_seq + i}")


def _check_transactions(batch: EventBatch) -> None:
    """Rows come in whole transactions that share their header, and open or close nothing."""
    cols = batch.columns
    seq, tx = cols["seq"], cols["tx"]
    starts = seq == tx
    if not starts[0]:
        raise SequenceError(
            f"event {int(seq[0])} names transaction {int(tx[0])}, expected {int(seq[0])}"
        )
    inside = np.flatnonzero(~starts[1:]) + 1
    stray = inside[tx[inside] != tx[inside - 1]]
    if stray.size:
        i = int(stray[0])
        raise SequenceError(
            f"event {int(seq[i])} names transaction {int(tx[i])}, expected {int(tx[i - 1])}"
        )
    same = np.ones(len(inside), dtype=bool)
    for h in HEADER[1:]:
        same &= cols[h][inside] == cols[h][inside - 1]
    if not same.all():
        i = int(inside[np.argmin(same)])
        raise InvalidEvent(
            f"event {int(seq[i])}: the events of one transaction share its run, episode, step "
            "and time"
        )
    lifecycle = np.flatnonzero(_OPENS_OR_CLOSES[batch.kind])
    if lifecycle.size:
        raise InvalidEvent(
            f"event {int(seq[lifecycle[0]])}: accounts are opened and closed by a transaction, "
            "not in a batch"
        )


def _check_vectors(batch: EventBatch) -> None:
    """Every row of a kind that carries a list column has it (optional ones may be absent)."""
    seq, n = batch.columns["seq"], len(batch)
    for name in sorted(LIST_COLUMNS):
        carriers = np.flatnonzero(_HAS[name][batch.kind])
        held = batch.vectors.get(name)
        if held is None and name in OPTIONAL_VECTORS:
            continue
        if carriers.size and (held is None or held.ndim != 2 or len(held) != n):
            i = int(carriers[0])
            raise InvalidEvent(
                f"event {int(seq[i])}: a {MODELS[batch.kind[i]].__name__} without its {name} vector"
            )


def _check_transfers(batch: EventBatch, accounts: frozenset[str]) -> None:
    """Every transfer a non-negative amount between opened accounts, only a Pay to itself."""
    cols, seq = batch.columns, batch.columns["seq"]
    moves = np.flatnonzero(IS_TRANSFER[batch.kind])
    if moves.size == 0:
        return
    amount, src, dst = cols["amount"][moves], cols["src"][moves], cols["dst"][moves]
    negative = np.flatnonzero(amount < 0)
    if negative.size:
        i = int(moves[negative[0]])
        raise UnbalancedTransaction(
            f"event {int(seq[i])}: {MODELS[batch.kind[i]].__name__} amount {int(cols['amount'][i])}"
            " is not a whole number of units in [0, 2**63 - 1]"
        )
    known = batch.string_codes(accounts)
    unknown = np.flatnonzero(~(known[src] & known[dst]))
    if unknown.size:
        j = int(unknown[0])
        name = batch.strings[src[j]] if not known[src[j]] else batch.strings[dst[j]]
        raise UnknownAccount(f"event {int(seq[moves[j]])}: account {name!r} was never opened")
    selfish = np.flatnonzero((src == dst) & (batch.kind[moves] != CODE[Pay]))
    if selfish.size:
        i = int(moves[selfish[0]])
        raise UnbalancedTransaction(
            f"event {int(seq[i])}: a {MODELS[batch.kind[i]].__name__} to itself"
        )


def _check_not_closed(batch: EventBatch, closed: frozenset[str]) -> None:
    """No row but a statement names a closed account (a batch's strings are canonical)."""
    gone = batch.string_codes(closed)
    if not gone.any():
        return
    hit = np.zeros(len(batch), dtype=bool)
    for name in _ADDRESS:
        hit |= gone[batch.columns[name]] & _HAS[name][batch.kind]
    hit &= ~_STATEMENT[batch.kind]
    if hit.any():
        i = int(np.argmax(hit))
        name = next(
            batch.strings[batch.columns[c][i]]
            for c in _ADDRESS
            if _HAS[c][batch.kind[i]] and gone[batch.columns[c][i]]
        )
        raise AccountClosed(
            f"event {int(batch.columns['seq'][i])}: {MODELS[batch.kind[i]].__name__} "
            f"addressed to closed account {name!r}"
        )


def table_of(staged: Sequence[Transaction | EventBatch]) -> pa.Table:
    """Staged transactions and batches, in order, as one single-chunk Arrow table."""
    parts: list[pa.Table] = []
    run: list[Any] = []
    for item in [*staged, None]:
        if run and (item is None or type(item) is not type(run[0])):
            if isinstance(run[0], EventBatch):
                parts.append(concat(run).to_table())
            else:
                parts.append(schema.to_table(run))
            run = []
        if item is not None:
            run.append(item)
    if not parts:
        return schema.SCHEMA.empty_table()
    return pa.concat_tables(parts).combine_chunks()


_NONE = np.zeros(0, dtype=bool)
"""A validity meaning no row carries the field."""


class _Carried:
    """Which rows of a batch carry each field: None for all, `_NONE` for none, else a mask,
    computed once per set of kinds that carry a field."""

    def __init__(self, kind: NDArray[np.int8]) -> None:
        self._kind = kind
        self._present = np.bincount(kind, minlength=len(MODELS)).astype(bool)
        self._masks: dict[bytes, NDArray[np.bool_] | None] = {}

    def __call__(self, name: str) -> NDArray[np.bool_] | None:
        has = _HAS[name]
        key = has.tobytes()
        if key not in self._masks:
            carriers = has[self._present]
            self._masks[key] = (
                None if carriers.all() else has[self._kind] if carriers.any() else _NONE
            )
        return self._masks[key]


def _strings(
    names: pa.Array, codes: NDArray[np.int64], valid: NDArray[np.bool_] | None
) -> pa.Array:
    """String column `codes` (into `names`), null where not `valid` (None: all valid)."""
    carried = codes if valid is None else codes[valid]
    if carried.size and (carried == carried[0]).all():  # one value: laid out directly
        value = names[int(carried[0])].as_py().encode()
        width = np.int32(len(value))
        lengths = np.full(len(codes), width) if valid is None else valid * width
        offsets = np.zeros(len(codes) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum(lengths)
        bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
        data = pa.py_buffer(value * carried.size)
        return pa.Array.from_buffers(
            pa.string(), len(codes), [bitmap, pa.py_buffer(offsets), data],
            null_count=len(codes) - carried.size,
        )  # fmt: skip
    return names.take(pa.array(codes, pa.int64(), mask=None if valid is None else ~valid))


def _masked(values: NDArray[Any], valid: NDArray[np.bool_], type_: pa.DataType) -> pa.Array:
    """`values` as an Arrow array of `type_`, null where not `valid`."""
    if type_ == pa.bool_():  # (bits, not bytes: Arrow packs them itself)
        return pa.array(values, type=type_, mask=~valid)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        type_,
        len(values),
        [bitmap, pa.py_buffer(np.ascontiguousarray(values))],
        null_count=int(len(values) - np.count_nonzero(valid)),
    )


@functools.cache
def numpy_type(name: str) -> type[Any]:
    """The NumPy dtype a batch uses for column `name` (string codes are int64)."""
    field = schema.SCHEMA.field(name)
    return np.int64 if name in STRING_COLUMNS else _NUMPY_TYPE[field.type]
