"""The audit: every rule of the books and of the mechanisms, checked from stored events alone.

Rules (a violation names the first broken one in sequence order):
  chain         every committed batch hashes to its chain link (on-disk ledgers)
  sequence      seq is 0, 1, 2, ... ; each transaction is a contiguous run of it; each
                episode is opened and its auctions are steps 0, 1, 2, ... between its start
                and its end
  balance       every money event is a whole transfer between accounts opened before it
  auction-only  money moves only inside an auction transaction
  allocation    the winner is the argmax of the recorded bids (ties: the first bid, i.e. the
                lowest bidder id), at its own bid
  price         one payment at the price of the episode's recorded mechanism (none for env)
  payer         the payer is the winner
  seller        the payee is the previous winner (the environment at step 0)
  mint          credit is minted only by the auctioneer, only under `v` after the first sale,
                exactly b1 - b2
  reward        one reward per auction, between the environment and the winner
  lifecycle     no account acts (is addressed by an event other than a balance statement)
                before its open or after its close; an account closes holding exactly 0
  budget        no bid is over the cap recorded with it, and the cap is the bidder's
                balance (never below 0) before the bid's transaction
  source        money enters or leaves the society only as tagged flows: rewards and
                endowments from the environment, the auctioneer's mint, and penalties and
                sales of a first state to the environment (the treasury is inside)
  endowment     an endowment funds an account opened in the same transaction
  rent          rent is paid to the treasury
  dividend      a dividend goes from a child to the parent that endowed it
  liquidation   a liquidation settles an account closed later in the same transaction
  closing       every balance statement equals the replay of all events before it
and the world's rules (`market.rederive`: transition, reward-value, duration, episode-start,
episode-order, run-start, run-end), which re-derive every transformation, reward and
duration from the task the run's configuration names.

Every check is a Polars query over one chunk of the ledger (a run of whole segments, about
`CHUNK_EVENTS` events) and the state carried from the chunks before it (`_Carry`), so an
audit costs a few passes over columns, not a Python loop over events, and its memory does
not grow with the ledger's length (docs/engine.md, "Whole-ledger work in bounded memory").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ledger import schema
from ledger.disk import DiskLedger
from ledger.errors import CorruptLedger
from ledger.events import (
    AUCTION_KINDS,
    AUCTIONEER,
    CONTROL,
    ENVIRONMENT,
    LIFECYCLE_KINDS,
    SYSTEM,
    TRANSFER_KINDS,
    TREASURY,
)
from ledger.replay import postings, replay_frame
from ledger.store import Ledger
from market import anchors, rederive
from market.anchors import Anchors, Vouched
from market.mechanisms import RULES

_C = pl.col
_MONEY = sorted(AUCTION_KINDS)
"""The transfers only an auction (or a control step) may make."""
_RULED = [
    "seq", "tx", "kind", "episode", "step", "account", "src", "dst", "amount", "mechanism", "cap",
    "episodes", "episode_return", "steps",
]  # fmt: skip
"""The columns the rules of this module read."""
_AUDITED = [*_RULED, *rederive.COLUMNS]
"""The columns every rule reads (the world's, `rederive`, too)."""
_SOURCES = [ENVIRONMENT, AUCTIONEER]
"""The accounts outside the society: money from them is created, money to them destroyed."""


@dataclass(frozen=True)
class Violation:
    """The first broken rule: where, which rule, what was expected and what was found."""

    seq: int
    rule: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.rule}: expected {self.expected}, found {self.found}"


@dataclass(frozen=True)
class Rule:
    """A rule as a query: the rows where `bad` holds break it."""

    name: str
    bad: pl.Expr
    expected: pl.Expr
    found: pl.Expr
    at: pl.Expr = field(default_factory=lambda: _C("seq"))
    """The seq a violation is reported at (the offending event's)."""


@dataclass
class AuditReport:
    """The verdict of an audit and the totals it read off the books."""

    events: int = 0
    auctions: int = 0
    episodes: int = 0
    rewards_in: int = 0
    minted: int = 0
    opens: int = 0
    closes: int = 0
    endowments: int = 0
    endowed: int = 0
    """Units endowed, by the environment and by parents."""
    endowed_in: int = 0
    """Units endowed by the environment (money the endowments bring into the society)."""
    rent: int = 0
    """Units paid in rent to the treasury."""
    liquidations: int = 0
    liquidated: int = 0
    dividends: int = 0
    dividends_paid: int = 0
    """Units children paid their parents."""
    closing_checked: int = 0
    vouched: Vouched = field(default_factory=Vouched)
    """What the heads kept elsewhere and the signatures vouch for (`anchors`)."""
    closed: bool = False
    last_run: tuple[int, int, int] | None = None
    """The last run's events (from its RunStart on), episodes ended and their returns'
    sum: what its summary.json states."""
    violation: Violation | None = None
    torn_tail: list[str] = field(default_factory=list)
    per_mechanism: list[dict[str, object]] = field(default_factory=list)
    not_rederived: dict[str, str] = field(default_factory=dict)
    """The world's rules (`rederive`) not re-derived, or only in part, for some run or
    episode: rule -> why (a task over images, trained networks, a hand-made run)."""

    @property
    def ok(self) -> bool:
        """True when no rule is broken."""
        return self.violation is None


def audit(
    ledger: Ledger,
    expected_head: str | Anchors | None = None,
    chunk_events: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a ledger; on disk, the hash chain and what vouches for it (`anchors.Anchors`:
    a head kept elsewhere, an earlier head it must extend, a key its heads are signed with)
    are checked before any event is read.

    A head (`expected_head`, or `Anchors.head`) is recorded elsewhere when the run finished:
    a ledger cut short, or rebuilt after an edit, ends at another head. One that passes
    through it and goes on (a continuation not yet recorded) is not a violation; the report
    says how far the head vouches (`anchored_to`). The events are read `chunk_events` at a
    time (default `CHUNK_EVENTS`), so memory does not grow with the ledger's length;
    `progress`, if given, is called with the events audited so far after each chunk.
    """
    report = AuditReport()
    if isinstance(ledger, DiskLedger):
        report.torn_tail = list(ledger.torn_tail)
        try:
            ledger.check_chain()
        except CorruptLedger as e:
            report.violation = Violation(e.seq, "chain", "bytes matching the chain", str(e))
            return report
        given = expected_head if isinstance(expected_head, Anchors) else Anchors(expected_head)
        broken = anchors.check(ledger, given, report.vouched)
        if broken is not None:
            report.violation = Violation(broken.seq, broken.rule, broken.expected, broken.found)
            return report
    chunks = ledger.chunks(chunk_events or CHUNK_EVENTS, _AUDITED, categories=True)
    return audit_chunks(chunks, report, progress)


def _ahead(parts: Iterator[_Part]) -> Iterator[_Part]:
    """`parts`, each read, decoded and prepared on a second thread while the one before is
    checked (the machine's second core)."""
    with ThreadPoolExecutor(1) as pool:
        coming = pool.submit(next, parts, None)
        while (part := coming.result()) is not None:
            coming = pool.submit(next, parts, None)
            yield part


def audit_frame(
    df: pl.DataFrame, report: AuditReport | None = None, chunk_events: int | None = None
) -> AuditReport:
    """Audit a frame of events in the ledger schema (`chunk_events` rows at a time)."""
    size = max(chunk_events or CHUNK_EVENTS, 1)
    return audit_chunks((df.slice(i, size) for i in range(0, df.height, size)), report)


def audit_chunks(
    chunks: Iterable[pl.DataFrame],
    report: AuditReport | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a ledger given as consecutive frames of its events, in seq order.

    Only carried state passes from one chunk to the next (`_Carry`: rows seen, the last
    transaction, accounts' lives, balances, running episodes, episodes ended since the run
    started, totals), so memory is bounded by a chunk and the society, not the ledger. The
    trailing transaction of a chunk is held back and audited with the next one, so a chunk
    may end anywhere.
    """
    stream = AuditStream(report)
    with _in_memory():
        for part in _ahead(map(_Part.of, _whole(chunks))):
            stream.check(part)
            if progress is not None:
                progress(stream.report.events)
    return stream.finish()


def _in_memory() -> pl.Config:
    """Polars' in-memory engine for the audit's queries: each reads one chunk already in
    memory, where the streaming engine (Polars' default for a lazy query) only adds its
    set-up to every one of some hundred queries a chunk. Measured on a 10M-event ledger:
    2.2M events/s with the default, 2.9M in memory, and less peak memory (docs/engine.md)."""
    return pl.Config(engine_affinity="in-memory")


class AuditStream:
    """The audit fed as a ledger grows: each `feed` checks every rule on a frame of whole
    transactions (a committed segment is one), given the state carried from the frames
    before; `violation` is the first broken rule so far. `audit_chunks` is this, fed a
    ledger's chunks in order; a live view (`market watch`) feeds it segments as they are
    committed."""

    def __init__(self, report: AuditReport | None = None) -> None:
        self.report = report or AuditReport()
        self._carry = _Carry()

    def feed(self, frame: pl.DataFrame) -> Violation | None:
        """Check the frame's events, which follow those fed before; the first violation so far."""
        with _in_memory():
            self.check(_Part.of(_conformed(frame)))
        return self.violation

    def check(self, part: _Part) -> None:
        """`feed`, for a part prepared already (`_Part.of`, on a reading thread)."""
        _audit_chunk(part, self._carry, self.report)

    @property
    def violation(self) -> Violation | None:
        return self._carry.found

    def finish(self) -> AuditReport:
        """The report of the events fed, totals included; an empty ledger is a violation."""
        report = self.report
        if self._carry.at == 0:
            report.violation = Violation(0, "sequence", "a run's events", "an empty ledger")
            return report
        report.violation = self._carry.found
        self._carry.finish(report)
        return report


def _whole(chunks: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
    """`chunks` conformed and cut at transaction boundaries: each chunk's trailing
    transaction is held back and joined to the next chunk's front."""
    held_back: pl.DataFrame | None = None
    for chunk in chunks:
        chunk = _conformed(chunk)
        if held_back is not None:
            chunk = pl.concat([held_back, chunk])
        if chunk.is_empty():
            continue
        last = chunk["tx"][-1]
        # (on the tx column alone: a filter of the frame would copy every column)
        cut = chunk.select(pl.int_range(pl.len()).filter(_C("tx") != last).max()).item()
        cut = 0 if cut is None else int(cut) + 1  # the first row of the trailing transaction
        held_back = chunk.slice(cut)
        if cut:
            yield chunk.head(cut)
    if held_back is not None and not held_back.is_empty():
        yield held_back


@dataclass(frozen=True)
class _Part:
    """A chunk of whole transactions with what its checks read that needs nothing carried
    (prepared on the reading thread)."""

    df: pl.DataFrame
    moves: pl.DataFrame
    """Its transfers."""
    sold: pl.DataFrame
    """One row per auction: its bids' summary and its allocate, pay, mint and reward."""
    world: rederive.Parts
    """The rows and columns the world's rules read (`rederive.prepare`)."""

    @classmethod
    def of(cls, df: pl.DataFrame) -> _Part:
        world = rederive.prepare(df)
        df = df.select(_RULED)
        moves = _rows(df, sorted(TRANSFER_KINDS), *_MOVE_COLUMNS)
        return cls(df, moves, _sold(df.lazy()), world)


_MOVE_COLUMNS = ("seq", "tx", "kind", "src", "dst", "amount")
"""The columns of a chunk's transfers (`_Part.moves`) that the rules read."""


def _rows(df: pl.DataFrame, kinds: list[str], *columns: str | pl.Expr) -> pl.DataFrame:
    """`columns` of the rows of `df` of one of `kinds`.

    Speed: the columns are picked before the rows (a lazy query), where an eager filter
    copies every column of the rows it keeps: a third to a seventh of the time on a chunk.
    """
    return df.lazy().filter(_C("kind").is_in(kinds)).select(*columns).collect()


CHUNK_EVENTS = 1 << 19
"""Events audited at once: a few hundred MB of working memory, whatever the ledger's length."""


def _conformed(df: pl.DataFrame) -> pl.DataFrame:
    missing: dict[str, pl.DataType] = {"cap": pl.Int64(), "episodes": pl.Int64(), **rederive.DTYPES}
    for col, dtype in missing.items():  # cap: a frame read from a ledger without an economy
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(col))
    # Speed: kinds and account names as categories, compared, hashed and joined as integer
    # codes by every rule (the cast costs one pass per column). Kinds alone: 20% less time
    # per chunk in all; the accounts too: 12% less CPU again on a 10M-event ledger.
    return df.select(_AUDITED).with_columns(_C(c).cast(pl.Categorical) for c in _CATEGORIES)


_CATEGORIES = [c for c in schema.DICTIONARY if c in _AUDITED]
"""The string columns an audit reads as categories (`_conformed`): those a segment stores
dictionary-encoded, so that reading them as categories decodes no string."""
_ACCOUNT = pl.Categorical
"""An account name in the audit's frames and carried state."""
_LIVES = {"account": _ACCOUNT, "o": pl.Int64, "o_tx": pl.Int64, "c": pl.Int64, "c_tx": pl.Int64}
_EPISODES = {
    "episode": pl.Int64, "mechanism": pl.Categorical, "winner": _ACCOUNT, "step": pl.Int64,
}  # fmt: skip


_TALLIES = {"episode": pl.Int64, "ret": pl.Int64, "n": pl.Int64}


@dataclass
class _Carry:
    """What the audit of one chunk hands to the next: nothing grows with the ledger."""

    at: int = 0
    """Rows audited so far (the expected seq of the next row)."""
    prev_tx: int | None = None
    """The transaction of the last row audited."""
    lives: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_LIVES))
    """Per account: the seq and tx of its first open and close so far."""
    parents: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"account": _ACCOUNT, "parent": _ACCOUNT})
    )
    """Per endowed account: who endowed it first."""
    held: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"account": _ACCOUNT, "base": pl.Int128})
    )
    """Per account: its balance after the last row audited."""
    episodes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_EPISODES))
    """The episodes started and not ended: mechanism, last winner and step (null before
    their first auction)."""
    ended: int = 0
    """Episodes ended since the last RunStart."""
    running: bool = False
    """Whether the last RunStart is not yet followed by its RunEnd."""
    run_from: int | None = None
    """The seq of the last RunStart."""
    run_return: int = 0
    """The episodes' returns summed since the last RunStart."""
    tallies: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_TALLIES))
    """Per episode running at the chunk's end: its return and steps so far."""
    found: Violation | None = None
    per_mechanism: pl.DataFrame | None = None
    lifecycle: pl.DataFrame | None = None
    endowed_in: int = 0
    world: rederive.Carry = field(default_factory=rederive.Carry)
    """What the world's rules carry (`rederive.Carry`)."""

    def report(self, violation: Violation | None) -> None:
        if violation is not None and (self.found is None or violation.seq < self.found.seq):
            self.found = violation

    def finish(self, report: AuditReport) -> None:
        per = self.per_mechanism
        if per is not None and per.height:
            per = per.group_by("mechanism").agg(pl.all().sum()).sort("mechanism")
            per = per.with_columns(
                _C(c).cast(pl.Int64) for c in ("episodes", "auctions", "rewards_in")
            )
            report.per_mechanism = per.to_dicts()
            report.auctions = int(per["auctions"].sum())
            report.rewards_in = int(per["rewards_in"].sum())
            report.minted = int(per["minted"].sum())
        totals: dict[str, tuple[int, int]] = {}
        if self.lifecycle is not None:
            for kind, count, amount in (
                self.lifecycle.group_by("kind").agg(pl.all().sum()).iter_rows()
            ):
                totals[kind] = (int(count), int(amount or 0))
        report.episodes = totals.get("episode_start", (0, 0))[0]
        report.closed = totals.get("run_end", (0, 0))[0] > 0 and not self.running
        report.opens, report.closes = totals.get("open", (0, 0))[0], totals.get("close", (0, 0))[0]
        report.endowments, report.endowed = totals.get("endow", (0, 0))
        report.rent = totals.get("rent", (0, 0))[1]
        report.liquidations, report.liquidated = totals.get("liquidate", (0, 0))
        report.dividends, report.dividends_paid = totals.get("dividend", (0, 0))
        report.endowed_in = self.endowed_in
        if self.run_from is not None:
            report.last_run = (report.events - self.run_from, self.ended, self.run_return)
        report.not_rederived = self.world.not_rederived()


def _audit_chunk(part: _Part, carry: _Carry, report: AuditReport) -> None:
    """Check every rule on the whole transactions of a chunk, given what came before."""
    df, moves = part.df, part.moves
    report.events += df.height
    events = df.lazy()
    lives = _merge_lives(carry, events)
    carry.parents = _merge_parents(carry, df)
    parents = lives.join(carry.parents, "account", "left")
    first = df["seq"].min()
    safe = lives.filter((_C("o") < first) & _C("c").is_null())["account"].to_list()
    # (accounts opened before the chunk's first event and not closed: no event of the chunk
    # addressed to them alone can break a lifecycle or opened-before-use rule)
    starts, ends = _bounds(events, carry)
    auctions = _auctions(part.sold, starts, ends, carry).collect()
    transfers = _transfers(moves, parents, safe).lazy()
    economy = bool(df.select(((_C("kind") == "close") | _C("cap").is_not_null()).any()).item())
    base = carry.held
    held = _held(moves.lazy(), base) if economy else pl.DataFrame()  # for economy rules
    sequenced = events.with_row_index("_at", offset=carry.at).with_columns(
        _C("tx").shift(1, fill_value=carry.prev_tx).alias("prev_tx")
    )
    money = moves.lazy().filter(_C("kind").is_in(_MONEY))
    found = [
        _first(sequenced, _sequence_rules()),
        _first(transfers, _balance_rules()),
        _first(
            _outside_steps(money, auctions.lazy(), _control_steps(events, starts)),
            [
                Rule(
                    "auction-only",
                    pl.lit(True),
                    pl.lit("money moving in an auction, or a reward in a control run's step"),
                    pl.format("{} outside any auction or control step", "kind"),
                )
            ],
        ),
        _first(auctions.lazy(), _auction_rules()),
        _first(_addressed(events, parents, safe), _lifecycle_rules()),
        _first(events, _budget_rules()),
        _caps_off_balances(events, held, base),
        _first(transfers, _economy_rules()),
        _closed_with_money(events, held, base),
        _run_ends(df, carry),
        _episode_ends(df, carry),
        _closing(df, moves, base, report),
        _rederived(part.world, carry.world),
    ]
    for v in found:
        carry.report(v)
    _totals(df, auctions, carry)
    _carry_over(df, moves, auctions, lives, ends.collect(), carry)


def _rederived(world: rederive.Parts, carry: rederive.Carry) -> Violation | None:
    """The first of the world's rules broken in the chunk (`rederive.check`)."""
    found = rederive.check(world, carry)
    return None if found is None else Violation(*found)


def _merge_lives(carry: _Carry, events: pl.LazyFrame) -> pl.DataFrame:
    """The lives of every account opened or closed up to the end of this chunk (first open
    and first close, by seq)."""
    first = {"o": "open", "c": "close"}
    found = (
        events.filter(_C("kind").is_in(list(first.values())))
        .group_by("account")
        .agg(
            _C(col).filter(_C("kind") == kind).min().alias(name + suffix)
            for name, kind in first.items()
            for col, suffix in (("seq", ""), ("tx", "_tx"))
        )
        .collect()
    )
    if found.is_empty():
        return carry.lives
    return (
        pl.concat([carry.lives, found.select(list(_LIVES))])
        .group_by("account", maintain_order=True)
        .agg(_C(c).min() for c in list(_LIVES)[1:])
    )


def _merge_parents(carry: _Carry, df: pl.DataFrame) -> pl.DataFrame:
    """Who endowed each account first, up to the end of this chunk."""
    endows = (
        _rows(df, ["endow"], "src", "dst")
        .group_by("dst", maintain_order=True)
        .agg(_C("src").first().alias("parent"))
        .rename({"dst": "account"})
    )
    if endows.is_empty():
        return carry.parents
    found = pl.concat([carry.parents, endows])
    return found.unique("account", keep="first", maintain_order=True)


def _carry_over(
    df: pl.DataFrame,
    moves: pl.DataFrame,
    auctions: pl.DataFrame,
    lives: pl.DataFrame,
    ends: pl.DataFrame,
    carry: _Carry,
) -> None:
    """Hand the state this chunk leaves to the next one."""
    carry.at += df.height
    carry.prev_tx = int(df["tx"][-1])
    carry.lives = lives
    moved = (
        postings(moves.lazy()).group_by("account").agg(_C("delta").cast(pl.Int128).sum()).collect()
    )
    if moved.height:
        carry.held = carry.held.join(moved, "account", "full", coalesce=True).select(
            "account", (_C("base").fill_null(0) + _C("delta").fill_null(0)).alias("base")
        )
    starts = _rows(df, ["episode_start"], "episode", "mechanism")
    last = auctions.group_by("episode").agg(_C("winner").last(), _C("step").last())
    known = (
        pl.concat(
            [
                carry.episodes.select("episode", "mechanism"),
                starts,
                last.select("episode", pl.lit(None, pl.Categorical).alias("mechanism")),
            ]
        )
        .group_by("episode", maintain_order=True)
        .agg(_C("mechanism").drop_nulls().first())
    )
    carry.episodes = (
        known.join(carry.episodes.drop("mechanism"), "episode", "left")
        .join(last, "episode", "left", suffix="_new")
        .select(
            "episode",
            "mechanism",
            pl.coalesce("winner_new", "winner").alias("winner"),
            pl.coalesce("step_new", "step").alias("step"),
        )
        .join(ends.select("episode"), "episode", "anti")
    )


def _first(frame: pl.LazyFrame, rules: list[Rule]) -> Violation | None:
    """The first row, by seq, that breaks any of `rules`."""
    firsts = frame.select(
        [r.at.filter(r.bad.fill_null(True)).min().alias(str(i)) for i, r in enumerate(rules)]
    ).collect()
    hits = [(s, i) for i, s in enumerate(firsts.row(0)) if s is not None]
    if not hits:
        return None
    seq, i = min(hits)
    rule = rules[i]
    row = (
        frame.filter(rule.bad.fill_null(True) & (rule.at == seq))
        .head(1)
        .select(rule.expected.cast(pl.String).alias("e"), rule.found.cast(pl.String).alias("f"))
    )
    e, f = row.collect().row(0)
    return Violation(seq, rule.name, str(e), str(f))


def _sequence_rules() -> list[Rule]:
    starts = (_C("tx") == _C("seq")) | (_C("tx") == _C("prev_tx"))
    return [
        Rule("sequence", _C("seq") != _C("_at"), _C("_at"), _C("seq")),
        Rule("sequence", ~starts, pl.lit("a contiguous transaction"), _C("tx")),
    ]


def _transfers(moves: pl.DataFrame, lives: pl.DataFrame, safe: list[str]) -> pl.DataFrame:
    """Every transfer with the lives of its payer (`o_src`, `c_tx_src`, ...) and payee, and
    its payer's parent (`parent_src`).

    Speed: only transfers that name an account outside `safe`, and dividends (whose rule
    reads the payer's parent), are joined; the others get an open at -1 (before every
    event) and no close, which is all their rules can read of a safe account.
    """
    needed = _suspect(("src", "dst"), safe) | (_C("kind") == "dividend")
    joined = moves.filter(needed).lazy()
    for who in ("src", "dst"):
        named = lives.lazy().rename({n: f"{n}_{who}" for n in lives.columns if n != "account"})
        joined = joined.join(named.rename({"account": who}), who, "left")
    plain = moves.filter(~needed).with_columns(
        pl.lit(-1, pl.Int64).alias(f"o_{who}") for who in ("src", "dst")
    )
    return pl.concat([joined.collect(), plain], how="diagonal_relaxed")


def _suspect(columns: tuple[str, ...], safe: list[str]) -> pl.Expr:
    """The rows that name, in any of `columns`, an account not in `safe`."""
    return pl.any_horizontal(_C(c).is_not_null() & ~_C(c).is_in(safe) for c in columns)


def _addressed(events: pl.LazyFrame, lives: pl.DataFrame, safe: list[str]) -> pl.LazyFrame:
    """Every (event, account it is addressed to) but statements, with that account's life.

    The control variant's `system` is a public address, not an account: it holds no money.

    Speed: only the events addressed to an account outside `safe` (opened before the chunk
    and not closed) are expanded and joined: in a running society, a few of a chunk's
    million.
    """
    events = events.filter(_suspect(_ADDRESSES, safe)).collect().lazy()
    named = [
        events.filter(_C(c).is_not_null() & (_C("kind") != "balance")).select(
            "seq", "kind", _C(c).alias("account")
        )
        for c in _ADDRESSES
    ]
    return pl.concat(named).filter(_C("account") != SYSTEM).join(lives.lazy(), "account", "left")


_ADDRESSES = ("account", "src", "dst")
"""The columns an event names accounts in."""


def _lifecycle_rules() -> list[Rule]:
    before = _C("o").is_null() | (_C("seq") < _C("o"))
    after = _C("c").is_not_null() & (_C("seq") > _C("c"))
    return [
        Rule(
            "lifecycle",
            before | after,
            pl.format("{} between the open and close of {}", "kind", "account"),
            pl.when(before)
            .then(pl.format("{} of {} before its open", "kind", "account"))
            .otherwise(pl.format("{} of {} after its close at seq {}", "kind", "account", "c")),
        )
    ]


def _budget_rules() -> list[Rule]:
    over = (_C("kind") == "bid") & _C("cap").is_not_null() & (_C("amount") > _C("cap"))
    return [
        Rule(
            "budget",
            over,
            pl.format("a bid of {} within its cap {}", "account", "cap"),
            pl.format("a bid of {}", "amount"),
        )
    ]


def _economy_rules() -> list[Rule]:
    kind, src, dst = _C("kind"), _C("src"), _C("dst")
    tagged = (
        pl.when(src == ENVIRONMENT)
        .then(kind.is_in(["reward", "endow"]))
        .when(src == AUCTIONEER)
        .then(kind == "mint")
        .when(dst == ENVIRONMENT)
        .then(kind.is_in(["reward", "pay"]))
        .otherwise(dst != AUCTIONEER)
    )
    move = pl.format("{} {} -> {} of {}", "kind", "src", "dst", "amount")
    new = _C("o_tx_dst") == _C("tx")
    settles = (_C("c_tx_src") == _C("tx")) | (_C("c_tx_dst") == _C("tx"))
    return [
        Rule("source", ~tagged, pl.lit("money from or to outside only as tagged flows"), move),
        Rule("endowment", (kind == "endow") & ~new, pl.lit("an account opened with it"), move),
        Rule("rent", (kind == "rent") & (dst != TREASURY), pl.lit(f"rent to {TREASURY}"), move),
        Rule(
            "dividend",
            (kind == "dividend") & (_C("parent_src") != dst).fill_null(True),
            pl.format("a dividend from {} to the account that endowed it", "src"),
            move,
        ),
        Rule(
            "liquidation",
            (kind == "liquidate") & ~settles,
            pl.lit("an account closed in the same transaction"),
            move,
        ),
    ]


def _held(events: pl.LazyFrame, base: pl.DataFrame) -> pl.DataFrame:
    """Each account's balance after every event of the chunk that moved it (seq, account,
    held), from its balance `base` before the chunk."""
    return (
        postings(events)
        .group_by("seq", "account")
        .agg(_C("delta").sum())
        .sort("seq")
        .with_columns(_C("delta").cast(pl.Int128).cum_sum().over("account").alias("held"))
        .join(base.lazy(), "account", "left", maintain_order="left")
        .select("seq", "account", (_C("held") + _C("base").fill_null(0)).alias("held"))
        .collect()
    )


def _before(frame: pl.DataFrame, held: pl.DataFrame, base: pl.DataFrame, on: str) -> pl.DataFrame:
    """`frame` (sorted by `on`) with `held`: its account's balance after event `on`, from
    the chunk's postings, or from `base` before them."""
    return (
        frame.join_asof(
            held.rename({"seq": on}), on=on, by="account", strategy="backward",
            check_sortedness=False,
        )
        .join(base, "account", "left", maintain_order="left")
        .with_columns(pl.coalesce("held", "base", pl.lit(0, pl.Int128)).alias("held"))
    )  # fmt: skip


def _closed_with_money(
    events: pl.LazyFrame, held: pl.DataFrame, base: pl.DataFrame
) -> Violation | None:
    """The first close of an account whose balance just before it is not 0."""
    closes = events.filter(_C("kind") == "close").select("seq", "account").collect()
    if closes.is_empty():
        return None
    found = _before(closes.sort("seq"), held, base, "seq").filter(_C("held") != 0)
    if found.is_empty():
        return None
    seq, account, amount = found.select("seq", "account", "held").row(0)
    return Violation(seq, "lifecycle", f"{account} closing at 0", f"balance {amount}")


def _caps_off_balances(
    events: pl.LazyFrame, held: pl.DataFrame, base: pl.DataFrame
) -> Violation | None:
    """The first bid whose recorded cap is not its bidder's balance (never below 0) just
    before the bid's transaction."""
    bids = (
        events.filter((_C("kind") == "bid") & _C("cap").is_not_null())
        .select("seq", (_C("tx") - 1).alias("before"), "account", "cap")
        .sort("before")
        .collect()
    )
    if bids.is_empty():
        return None
    found = (
        _before(bids, held, base, "before")
        .with_columns(_C("held").clip(lower_bound=0).alias("budget"))
        .filter(_C("cap") != _C("budget"))
        .sort("seq")
    )
    if found.is_empty():
        return None
    seq, account, cap, budget = found.select("seq", "account", "cap", "budget").row(0)
    return Violation(seq, "budget", f"the cap of {account}'s balance {budget}", f"cap {cap}")


def _balance_rules() -> list[Rule]:
    whole = _C("amount").is_not_null() & (_C("amount") >= 0)
    self_transfer = (_C("src") == _C("dst")) & (_C("kind") != "pay")
    opened = (_C("o_src") < _C("seq")) & (_C("o_dst") < _C("seq"))
    move = pl.format("{} {} -> {} of {}", "kind", "src", "dst", "amount")
    return [
        Rule("balance", ~whole | self_transfer, pl.lit("a whole transfer"), move),
        Rule("balance", ~opened, pl.lit("accounts opened before use"), move),
    ]


def _bounds(events: pl.LazyFrame, carry: _Carry) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The starts of the episodes running before or starting in the chunk (episode,
    mechanism, start_at: -1 for a running one), and the first end of each after its start
    (episode, end)."""
    kind = _C("kind")
    starts = pl.concat(
        [
            carry.episodes.lazy()
            .filter(_C("mechanism").is_not_null())
            .select("episode", "mechanism", pl.lit(-1, pl.Int64).alias("start_at")),
            events.filter(kind == "episode_start").select("episode", "mechanism", start_at="seq"),
        ]
    )
    ends = (
        events.filter(kind == "episode_end")
        .select("episode", "seq")
        .join(starts, "episode")
        .filter(_C("seq") > _C("start_at"))
        .group_by("episode")
        .agg(_C("seq").min().alias("end"))
    )
    return starts, ends


def _sold(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per auction transaction: its bids' summary and what was recorded."""
    kind = _C("kind")
    recorded = (
        events.filter(kind.is_in(["allocate", "pay", "mint", "reward"]))
        .select("seq", "tx", "kind", "account", "src", "dst", "amount")
        .collect()
        .lazy()
    )

    def one(k: str, **cols: str) -> pl.LazyFrame:
        return recorded.filter(kind == k).select("tx", **{n: _C(c) for n, c in cols.items()})

    bids = events.filter(kind == "bid").select("seq", "tx", "episode", "step", "account", "amount")
    return (
        _bid_summary(bids.collect())
        .lazy()
        .join(one("allocate", winner="account", won="amount", alloc_at="seq"), "tx", "left")
        .join(one("pay", paid="amount", payer="src", payee="dst", pay_at="seq"), "tx", "left")
        .join(one("mint", minted="amount", minter="src", mintee="dst", mint_at="seq"), "tx", "left")
        .join(one("reward", r_src="src", r_dst="dst", r_amount="amount", r_at="seq"), "tx", "left")
        .collect()
    )


def _auctions(
    sold: pl.DataFrame, starts: pl.LazyFrame, ends: pl.LazyFrame, carry: _Carry
) -> pl.LazyFrame:
    """The chunk's auctions (`sold`) with the previous auction of their episode
    (`prev_winner`, `prev_step`: the running episode's last auction before the chunk, for its
    first one here), given the episodes' `starts` and `ends` (`_bounds`).

    An auction belongs to an opened episode (`mechanism`) only between the episode's start
    and its end."""
    carried = carry.episodes.lazy().filter(_C("winner").is_not_null())
    same_episode = _C("episode") == _C("episode").shift(1)
    open_ = (_C("start_at") < _C("seq")) & (_C("end").is_null() | (_C("end") > _C("seq")))
    return (
        sold.lazy()
        .join(starts, "episode", "left")
        .join(ends, "episode", "left")
        .with_columns(
            pl.when(open_).then(_C("mechanism")).alias("mechanism"),
            _C("tx").is_duplicated().alias("repeated"),
            pl.lit(False).alias("_carried"),
        )
        .drop("start_at", "end")
        .pipe(
            lambda a: pl.concat(
                [
                    carried.select(
                        "episode",
                        "winner",
                        "step",
                        pl.lit(-1, pl.Int64).alias("seq"),
                        pl.lit(True).alias("_carried"),
                    ),
                    a,
                ],
                how="diagonal_relaxed",
            )
        )
        .sort("episode", "seq")  # each episode's auctions in order, episodes one after another
        .with_columns(
            pl.when(same_episode).then(_C("winner").shift(1)).alias("prev_winner"),
            pl.when(same_episode).then(_C("step").shift(1)).alias("prev_step"),
        )
        .filter(~_C("_carried"))
        .drop("_carried")
    )


def _bid_summary(bids: pl.DataFrame) -> pl.DataFrame:
    """Per auction: b1, b2 (0 with one bid) and the first bidder at b1 (the lowest id).

    Speed: a transaction's bids are contiguous rows in seq order (the ledger guarantees it),
    so NumPy segment reductions replace a hash group-by with per-group sorts.
    """
    tx = bids["tx"].to_numpy()
    amount = bids["amount"].to_numpy()
    starts = np.flatnonzero(np.r_[True, tx[1:] != tx[:-1]]) if len(tx) else np.array([], int)
    if not len(starts):
        empty = {"b1": pl.Int64, "b2": pl.Int64, "argmax": _ACCOUNT}
        return (
            bids.head(0)
            .drop("account", "amount")
            .with_columns(pl.lit(None, dtype=t).alias(n) for n, t in empty.items())
        )
    b1 = np.maximum.reduceat(amount, starts)
    size = np.diff(np.r_[starts, len(tx)])
    at = np.arange(len(tx))
    first_max = np.minimum.reduceat(np.where(amount == np.repeat(b1, size), at, len(tx)), starts)
    others = amount.copy()
    others[first_max] = -1
    b2 = np.maximum(np.maximum.reduceat(others, starts), 0)
    return (
        bids[starts]
        .drop("account", "amount")
        .with_columns(
            pl.Series("b1", b1),
            pl.Series("b2", b2),
            bids["account"].gather(first_max).alias("argmax"),
        )
    )


def _mechanism_terms() -> tuple[pl.Expr, pl.Expr]:
    """An auction's price (null: no payment) and mint under its mechanism, read from the
    mechanism table row by row (`market.mechanisms.RULES`)."""
    mech, step, b1, b2 = _C("mechanism"), _C("step"), _C("b1"), _C("b2")
    price: Any = pl.lit(None, pl.Int64)
    mint: Any = pl.lit(0, pl.Int64)
    for key, rule in RULES.items():
        if (paid := rule.price_of(b1, b2)) is not None:
            price = pl.when(mech == key.value).then(paid).otherwise(price)
        if (made := rule.mint_of(b1, b2)) is not None:
            mint = pl.when((mech == key.value) & (step > 0)).then(made).otherwise(mint)
    return price, mint


def _minted_as_told(mint: pl.Expr, seller: pl.Expr) -> pl.Expr:
    """An auction's Mint, if any, is `mint` from the auctioneer to `seller`; none if 0."""
    return (
        pl.when(_C("minted").is_not_null())
        .then((_C("minted") == mint) & (_C("minter") == AUCTIONEER) & (_C("mintee") == seller))
        .otherwise(mint == 0)
    )


def _auction_rules() -> list[Rule]:
    mech, step, fmt = _C("mechanism"), _C("step"), pl.format
    price, mint = _mechanism_terms()
    seller = pl.when(step == 0).then(pl.lit(ENVIRONMENT)).otherwise(_C("prev_winner"))
    in_order = (
        pl.when(step == 0).then(_C("prev_step").is_null()).otherwise(_C("prev_step") == step - 1)
    )
    paid = _C("paid").is_not_null()
    pay_ok = pl.when(price.is_null()).then(~paid).otherwise(paid & (_C("paid") == price))
    mint_ok = _minted_as_told(mint, seller)
    reward_ok = ((_C("r_src") == ENVIRONMENT) & (_C("r_dst") == _C("winner"))) | (
        (_C("r_dst") == ENVIRONMENT) & (_C("r_src") == _C("winner"))
    )
    return [
        Rule(
            "sequence",
            _C("repeated"),
            pl.lit("one allocate, pay, mint and reward per auction"),
            pl.format("more in transaction {}", "tx"),
        ),
        Rule(
            "sequence",
            mech.is_null() | ~in_order,
            pl.lit("an opened episode, step by step"),
            fmt("episode {} step {}", "episode", "step"),
        ),
        Rule(
            "allocation",
            (_C("winner") != _C("argmax")) | (_C("won") != _C("b1")),
            fmt("{} at {}", "argmax", "b1"),
            fmt("{} at {}", "winner", "won"),
            pl.coalesce("alloc_at", "seq"),
        ),
        Rule(
            "price",
            ~pay_ok,
            fmt("{} under {}", price.fill_null(pl.lit("no payment")), mech),
            _C("paid").fill_null(pl.lit("no payment")),
            pl.coalesce("pay_at", "seq"),
        ),
        Rule(
            "payer", paid & (_C("payer") != _C("winner")), _C("winner"), _C("payer"), _C("pay_at")
        ),
        Rule("seller", paid & (_C("payee") != seller), seller, _C("payee"), _C("pay_at")),
        Rule(
            "mint",
            ~mint_ok,
            fmt("{} to {}", mint, seller),
            fmt("{} from {} to {}", "minted", "minter", "mintee"),
            pl.coalesce("mint_at", "pay_at", "seq"),
        ),
        Rule(
            "reward",
            ~reward_ok,
            pl.lit("environment <-> winner"),
            fmt("{} -> {}", "r_src", "r_dst"),
            pl.coalesce("r_at", "seq"),
        ),
    ]


def _run_ends(df: pl.DataFrame, carry: _Carry) -> Violation | None:
    """The first RunEnd whose episode count is not the number of episodes that ended since
    its run started."""
    marks = _rows(
        df, ["run_start", "episode_end", "run_end"], "seq", "kind", "episodes", "episode_return"
    )
    ended, found = carry.ended, None
    for seq, kind, episodes, returned in marks.iter_rows():
        if kind == "run_start":
            ended, carry.running = 0, True
            carry.run_from, carry.run_return = seq, 0
        elif kind == "episode_end":
            ended += 1
            carry.run_return += returned
        else:
            carry.running = False
            if episodes != ended and found is None:
                found = Violation(
                    seq, "run-end", f"{ended} episodes ended in the run", str(episodes)
                )
    carry.ended = ended
    return found


def _control_steps(events: pl.LazyFrame, starts: pl.LazyFrame) -> pl.LazyFrame:
    """The control steps (tx): transactions with a `Transition`, in an episode of a
    control run."""
    return (
        events.filter(_C("kind") == "transition")
        .select("tx", "episode")
        .join(starts.select("episode", "mechanism"), "episode")
        .filter(_C("mechanism") == CONTROL)
        .select("tx")
        .unique()
    )


def _outside_steps(
    money: pl.LazyFrame, auctions: pl.LazyFrame, steps: pl.LazyFrame
) -> pl.LazyFrame:
    """The money moving neither in an auction nor as a reward of a control step (a control
    step pays no price and mints nothing)."""
    outside = money.join(auctions, "tx", "anti").join(steps, "tx", "anti")
    odd = money.join(steps, "tx").filter(_C("kind") != "reward")
    return pl.concat([outside, odd])


def _episode_ends(df: pl.DataFrame, carry: _Carry) -> Violation | None:
    """The first EpisodeEnd whose return or step count is not what its episode's events add
    up to: the signed rewards (from the environment +, to it -) and the steps (an auction's
    Allocate, a control step's Transition) before it. Episodes running across chunks carry
    their tallies."""
    kind = _C("kind")
    signed = pl.when(_C("src") == ENVIRONMENT).then(_C("amount")).otherwise(-_C("amount"))
    ends = (  # each episode's first end (a second one breaks the sequence rules)
        _rows(df, ["episode_end"], "seq", "episode", "episode_return", "steps").unique(
            "episode", keep="first", maintain_order=True
        )
    )
    rows = _rows(
        df, ["reward", "allocate", "transition"], "seq", "episode",
        pl.when(kind == "reward").then(signed).otherwise(0).alias("ret"),
        (kind != "reward").cast(pl.Int64).alias("n"),
    )  # fmt: skip
    sums = rows.group_by("episode").agg(_C("ret").sum(), _C("n").sum(), _C("seq").max())
    late = sums.join(ends.select("episode", end="seq"), "episode").filter(_C("seq") > _C("end"))
    if late.height:  # events of an episode after its end (the sequence rules name them)
        rows = rows.join(ends.select("episode", end="seq"), "episode", "left").filter(
            _C("end").is_null() | (_C("seq") < _C("end"))
        )
        sums = rows.group_by("episode").agg(_C("ret").sum(), _C("n").sum())
    tallies = (
        pl.concat([carry.tallies, sums.select(list(_TALLIES))])
        .group_by("episode")
        .agg(_C("ret").sum(), _C("n").sum())
    )
    carry.tallies = tallies.join(ends, "episode", "anti")
    if ends.is_empty():
        return None
    wrong = (
        ends.join(tallies, "episode", "left")
        .with_columns(_C("ret").fill_null(0), _C("n").fill_null(0))
        .filter((_C("episode_return") != _C("ret")) | (_C("steps") != _C("n")))
        .sort("seq")
    )
    if wrong.is_empty():
        return None
    seq, ret, n, told, steps = wrong.select("seq", "ret", "n", "episode_return", "steps").row(0)
    return Violation(
        seq, "episode-end", f"return {ret} over {n} steps from its events",
        f"return {told} over {steps} steps",
    )  # fmt: skip


def _closing(
    df: pl.DataFrame, moves: pl.DataFrame, base: pl.DataFrame, report: AuditReport
) -> Violation | None:
    """The first balance statement that is not the replay of every event before it."""
    statements = _rows(df, ["balance"], "tx", "seq", "account", "amount")
    opening, found = dict(base.iter_rows()), None
    for (tx,), group in statements.group_by("tx", maintain_order=True):
        assert isinstance(tx, int)
        replayed = dict(opening)
        for account, delta in replay_frame(moves.lazy(), upto=tx - 1).items():
            replayed[account] = replayed.get(account, 0) + delta
        for seq, account, amount in group.select("seq", "account", "amount").iter_rows():
            report.closing_checked += 1
            if replayed.get(account, 0) != amount:
                found = found or Violation(
                    seq, "closing", str(replayed.get(account, 0)), str(amount)
                )
                break
    return found


def _totals(df: pl.DataFrame, a: pl.DataFrame, carry: _Carry) -> None:
    """Add this chunk's auctions and lifecycle events to the totals."""
    new = a.join(carry.episodes.filter(_C("winner").is_not_null()), "episode", "anti")
    signed = pl.when(_C("r_src") == ENVIRONMENT).then(_C("r_amount")).otherwise(-_C("r_amount"))
    per = (
        a.group_by("mechanism")
        .agg(
            pl.len().alias("auctions"),
            signed.cast(pl.Int128).sum().alias("rewards_in"),
            _C("paid").cast(pl.Int128).sum().alias("paid"),
            _C("minted").cast(pl.Int128).sum().alias("minted"),
        )
        .join(
            new.group_by("mechanism").agg(_C("episode").n_unique().alias("episodes")),
            "mechanism",
            "left",
            nulls_equal=True,
        )
        .select(
            "mechanism", _C("episodes").fill_null(0).cast(pl.Int64), "auctions",
            "rewards_in", "paid", "minted",
        )
    )  # fmt: skip
    if carry.per_mechanism is not None:
        per = pl.concat([carry.per_mechanism, per]).group_by("mechanism").agg(pl.all().sum())
    carry.per_mechanism = per
    rows = _rows(
        df,
        ["open", "episode_start", "run_end", *sorted(LIFECYCLE_KINDS)],
        "kind", "src", "amount",
    )  # fmt: skip
    per_kind = rows.group_by("kind").agg(
        pl.len().cast(pl.Int128).alias("count"), _C("amount").cast(pl.Int128).sum()
    )
    if carry.lifecycle is not None:
        per_kind = pl.concat([carry.lifecycle, per_kind]).group_by("kind").agg(pl.all().sum())
    carry.lifecycle = per_kind
    from_environment = (_C("kind") == "endow") & (_C("src") == ENVIRONMENT)
    carry.endowed_in += int(rows.filter(from_environment)["amount"].cast(pl.Int128).sum() or 0)
