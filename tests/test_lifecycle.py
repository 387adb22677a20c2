"""Accounts that are born, pay rent and die: the ledger's rules, the audit's, and
conservation of money across random lifecycles."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import (
    ACCOUNTS,
    ALICE,
    BOB,
    CAROL,
    SMALL_BATCH,
    Tx,
    append_all,
    committed,
    head,
    history,
    lifecycle_history,
    moves,
    next_seq,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import schema
from ledger.batch import of_transactions
from ledger.disk import DiskLedger
from ledger.errors import AccountClosed, ClosingBalance, InvalidEvent, UnknownAccount
from ledger.events import (
    AUCTIONEER,
    ENVIRONMENT,
    TREASURY,
    Allocate,
    Balance,
    Bid,
    Close,
    Dividend,
    Endow,
    EpisodeStart,
    Liquidate,
    Open,
    Pay,
    Rent,
    Reward,
    Transform,
)
from ledger.replay import LiveBalances, replay
from ledger.store import Ledger, MemoryLedger
from ledger.transaction import Transaction
from market.audit import audit, audit_frame
from market.bus import Bus

pytestmark = pytest.mark.usefixtures("small_chunks")

HEAD = len(ACCOUNTS) + 1
"""The ledger head after the hand-made opening transaction."""
T = HEAD + 1
"""The ledger head after `economy` has opened the treasury too."""


@pytest.fixture
def economy(opened: Ledger) -> Ledger:
    """A ledger of every backend holding the opening and the treasury's Open."""
    opened.append([Open(**head(HEAD, HEAD), account=TREASURY)])
    return opened


def _close(account: str, seq: int = HEAD, tx: int | None = None) -> Tx:
    """A Close of `account` at `seq`, in transaction `tx` (its own by default)."""
    return [Close(**head(seq, seq if tx is None else tx), account=account, reason="idle")]


def _rows(txs: list[Tx]) -> pl.DataFrame:
    """Hand-made transactions as a ledger frame, written without any of the ledger's checks."""
    frame = pl.from_arrow(schema.to_table([Transaction.of(tx) for tx in txs]))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _lifecycle_frame() -> pl.DataFrame:
    ledger = MemoryLedger()
    append_all(ledger, lifecycle_history())
    return ledger.scan().collect()


def _seq_of(df: pl.DataFrame, kind: str, **where: str) -> int:
    match = pl.col("kind") == kind
    for column, value in where.items():
        match &= pl.col(column) == value
    return int(df.filter(match)["seq"][0])


def _falsify(df: pl.DataFrame, seq: int, **values: object) -> pl.DataFrame:
    return df.with_columns(
        pl.when(pl.col("seq") == seq).then(pl.lit(v)).otherwise(pl.col(k)).alias(k)
        for k, v in values.items()
    )


def _violation(df: pl.DataFrame) -> tuple[str, int]:
    report = audit_frame(df)
    assert report.violation is not None
    return report.violation.rule, report.violation.seq


# The ledger


def test_close_with_a_balance_is_rejected(opened: Ledger) -> None:
    """An account closes only at exactly 0: a Close with money left raises ClosingBalance."""
    opened.append(moves(HEAD, (Reward, ENVIRONMENT, BOB, 7)))
    before = committed(opened)
    with pytest.raises(ClosingBalance, match="balance 7"):
        opened.append(_close(BOB, HEAD + 1))
    assert (opened.next_seq, opened.closed) == (HEAD + 1, frozenset())
    assert committed(opened) == before


def test_close_with_a_debt_is_rejected(opened: Ledger) -> None:
    """A negative balance is no more closable than a positive one."""
    opened.append(moves(HEAD, (Pay, BOB, ALICE, 3)))
    with pytest.raises(ClosingBalance, match="balance -3"):
        opened.append(_close(BOB, HEAD + 1))


def test_liquidate_then_close_in_one_transaction(economy: Ledger) -> None:
    """A Close counts the transfers before it in its transaction (wealth out, debt covered)."""
    economy.append(moves(T, (Reward, ENVIRONMENT, BOB, 7), (Pay, ALICE, ENVIRONMENT, 2)))
    for first, account, move in (
        (T + 2, BOB, (Liquidate, BOB, TREASURY, 7)),
        (T + 4, ALICE, (Liquidate, TREASURY, ALICE, 2)),
    ):
        economy.append([*moves(first, move), *_close(account, first + 1, first)])
    assert economy.closed == {ALICE, BOB}
    economy.flush()
    assert (replay(economy)[ALICE], replay(economy)[BOB], replay(economy)[TREASURY]) == (0, 0, 5)


def test_close_of_an_unknown_account_is_rejected(opened: Ledger) -> None:
    """Only an opened account can be closed."""
    with pytest.raises(UnknownAccount, match="'mallory'"):
        opened.append(_close("mallory"))
    assert opened.next_seq == HEAD


def test_event_after_close_in_the_same_transaction_is_rejected(opened: Ledger) -> None:
    """A Close shuts its account to the rest of its transaction; a rejected one closes nothing."""
    tx = [*_close(BOB), Pay(**head(HEAD + 1, HEAD), src=ALICE, dst=BOB, amount=0)]
    with pytest.raises(AccountClosed, match=f"event {HEAD + 1}"):
        opened.append(tx)
    assert opened.closed == frozenset()
    opened.append(moves(HEAD, (Pay, ALICE, BOB, 1)))


def test_balance_statement_may_name_a_closed_account(opened: Ledger) -> None:
    """A run's closing lists every account ever opened: a statement of a closed one is taken."""
    opened.append(_close(BOB))
    opened.append([Balance(**head(HEAD + 1, HEAD + 1), account=BOB, amount=0)])
    assert opened.next_seq == HEAD + 2


def test_closed_account_in_a_batch_is_rejected_whole(economy: Ledger) -> None:
    """A batch with a row addressed to a closed account is refused whole, naming the row."""
    economy.append(_close(BOB, T))
    good = moves(T + 1, (Rent, ALICE, TREASURY, 1))
    bad = moves(T + 2, (Pay, ALICE, BOB, 1))
    batch = of_transactions([Transaction.of(good), Transaction.of(bad)])
    with pytest.raises(AccountClosed, match=f"event {T + 2}.*'bob'"):
        economy.append_batch(batch)
    assert economy.next_seq == T + 1
    assert len(committed(economy)) == T + 1
    economy.append_batch(of_transactions([Transaction.of(good)]))
    assert economy.next_seq == T + 2


def test_close_inside_a_batch_is_rejected(opened: Ledger) -> None:
    """Accounts are closed by a transaction, as they are opened, never inside a batch."""
    with pytest.raises(InvalidEvent, match="not in a batch"):
        opened.append_batch(of_transactions([Transaction.of(_close(BOB))]))
    assert opened.closed == frozenset()


def test_balances_fold_only_what_is_new(economy: Ledger) -> None:
    """`balances()` equals the replay after every append, batches and transactions alike."""
    economy.append(moves(T, (Endow, ENVIRONMENT, ALICE, 9)))
    economy.flush()
    assert economy.balances() == replay(economy)
    economy.append_batch(of_transactions([Transaction.of(moves(T + 1, (Rent, ALICE, BOB, 4)))]))
    economy.append(moves(T + 2, (Pay, BOB, ALICE, 1)))
    economy.flush()
    assert economy.balances() == replay(economy) == {ENVIRONMENT: -9, ALICE: 6, BOB: 3}


def test_reopened_disk_ledger_remembers_closes_and_balances(tmp_path: Path) -> None:
    """A reopened ledger still refuses a closed account, and folds balances from disk."""
    path = tmp_path / "ledger"
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, lifecycle_history())
    again = DiskLedger(path)
    assert again.closed == {BOB}
    first = again.next_seq
    with pytest.raises(AccountClosed):
        again.append(moves(first, (Rent, BOB, TREASURY, 1)))
    with pytest.raises(ClosingBalance):
        again.append(_close(CAROL, first))
    assert again.balances() == replay(again)


def test_bid_over_its_cap_is_an_invalid_event(opened: Ledger) -> None:
    """A Bid model over its cap does not validate, so it cannot be appended as an event."""
    bid = Bid.model_construct(**head(HEAD, HEAD), account=BOB, primitive=0, state=0,
                              amount=6, cap=5)  # fmt: skip
    with pytest.raises(InvalidEvent, match="cap"):
        opened.append([bid])


# Storage


def test_ledger_without_economy_stores_the_base_schema(tmp_path: Path) -> None:
    """A ledger without an economy stores every segment in BASE_SCHEMA, the layout of every
    ledger made before economies existed (its strings dictionary-encoded)."""
    path = tmp_path / "ledger"
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, history())
    base = schema.encode(schema.BASE_SCHEMA.empty_table()).schema
    for segment in sorted(path.glob("seg-*.arrow")):
        assert ipc.open_file(pa.memory_map(str(segment))).schema == base


def test_economy_ledger_stores_the_whole_schema_and_reads_directly(tmp_path: Path) -> None:
    """An economy endowed at its opening stores its columns in every segment: Polars reads
    it directly (all but the observations, which it does not make)."""
    path = tmp_path / "ledger"
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, lifecycle_history())
    direct = pl.scan_ipc(path / "seg-*.arrow").collect()
    assert direct.columns == [*schema.BASE_SCHEMA.names, *schema.ECONOMY_COLUMNS]
    assert direct.equals(DiskLedger(path).scan().drop(schema.OPTIONAL["observations"]).collect())
    assert direct.filter(kind="bid")["cap"].null_count() == 0


def test_ledger_that_gains_an_economy_reads_both_layouts(tmp_path: Path) -> None:
    """Segments before a ledger's first economy event keep the base layout; scan reads both."""
    path = tmp_path / "ledger"
    txs = history()[:-1]
    n = next_seq(txs)
    txs.append([Open(**head(n, n), account=TREASURY)])
    txs.append(moves(n + 1, (Rent, ALICE, TREASURY, 2)))
    txs.append(moves(n + 2, (Rent, BOB, TREASURY, 1)))
    with DiskLedger(path, batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, txs)
    layouts = [pl.read_ipc_schema(p).keys() for p in sorted(path.glob("seg-*.arrow"))]
    assert "cap" not in layouts[0] and "cap" in layouts[-1]
    again = DiskLedger(path)
    assert list(again.events()) == [e for tx in txs for e in tx]
    assert again.scan().collect().columns == list(schema.COLUMNS)
    again.append(moves(again.next_seq, (Rent, ALICE, TREASURY, 1)))
    again.close()
    assert "cap" in pl.read_ipc_schema(sorted(path.glob("seg-*.arrow"))[-1])


def test_economy_batches_write_the_segments_of_one_by_one(tmp_path: Path) -> None:
    """Capped bids and rent in batches store the bytes the same transactions store singly."""
    txs = [Transaction.of(tx) for tx in lifecycle_history()]
    paths = tmp_path / "batched", tmp_path / "single"
    with DiskLedger(paths[0], batch_events=7) as batched:
        run: list[Transaction] = []
        for tx in [*txs, None]:
            singly = tx is None or any(m in (Open, Close) for m, _ in tx.body)
            if singly and run:
                batched.append_batch(of_transactions(run))
                run = []
            if tx is not None:
                (batched.append if singly else run.append)(tx)
    with DiskLedger(paths[1], batch_events=7) as single:
        for tx in txs:
            single.append(tx)
    files = [{p.name: p.read_bytes() for p in sorted(d.iterdir())} for d in paths]
    assert files[0] == files[1]


# The audit


def test_lifecycle_history_audits_clean(tmp_path: Path) -> None:
    """The hand-made economy breaks no rule, and the audit counts its lifecycle."""
    with DiskLedger(tmp_path / "ledger", batch_events=SMALL_BATCH) as ledger:
        append_all(ledger, lifecycle_history())
    report = audit(ledger)
    assert report.ok, report.violation
    assert (report.opens, report.closes, report.endowments, report.liquidations) == (6, 1, 3, 1)
    assert (report.endowed, report.endowed_in, report.rent, report.liquidated) == (225, 200, 4, 89)
    assert (report.dividends, report.dividends_paid) == (1, 2)


def test_event_after_close_is_flagged_by_the_audit() -> None:
    """A closed account paying rent (written past the ledger's checks) breaks lifecycle there."""
    txs = lifecycle_history()[:-1]
    n = next_seq(txs)
    txs.append(moves(n, (Rent, BOB, TREASURY, 1)))
    assert _violation(_rows(txs)) == ("lifecycle", n)


def test_bid_before_open_is_flagged_by_the_audit() -> None:
    """An account bidding before its Open breaks the lifecycle rule at the bid."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "bid", account=BOB)
    assert _violation(_falsify(df, seq, account=CAROL)) == ("lifecycle", seq)


def test_bid_over_its_cap_is_flagged_by_the_audit() -> None:
    """A bid over the cap recorded with it breaks the budget rule at the bid."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "bid", account=CAROL)
    assert _violation(_falsify(df, seq, cap=2)) == ("budget", seq)


def test_cap_other_than_the_balance_is_flagged_by_the_audit() -> None:
    """A cap must be the bidder's balance before its transaction (0 when in debt): a bid
    within a cap raised above the balance breaks the budget rule at the bid."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "bid", account=CAROL)
    cap = int(df.filter(pl.col("seq") == seq)["cap"][0])
    assert _violation(_falsify(df, seq, cap=cap + 1)) == ("budget", seq)
    assert _violation(_falsify(df, seq, cap=cap - 1, amount=0)) == ("budget", seq)


def test_close_with_money_is_flagged_by_the_audit() -> None:
    """A Close after a liquidation that left money behind breaks the lifecycle rule."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "liquidate")
    amount = int(df.filter(pl.col("seq") == seq)["amount"][0])
    assert _violation(_falsify(df, seq, amount=amount - 1)) == ("lifecycle", seq + 1)


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        ("rent", ENVIRONMENT, TREASURY),
        ("endow", AUCTIONEER, BOB),
        ("rent", BOB, AUCTIONEER),
        ("liquidate", BOB, ENVIRONMENT),
    ],
)
def test_untagged_money_from_or_to_outside_is_flagged_by_the_audit(
    kind: str, src: str, dst: str
) -> None:
    """Money enters or leaves the society only as tagged flows."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "rent", src=BOB)
    assert _violation(_falsify(df, seq, kind=kind, src=src, dst=dst)) == ("source", seq)


def test_endowment_of_an_old_account_is_flagged_by_the_audit() -> None:
    """An endowment funds only an account opened in its own transaction."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "rent", src=ALICE)
    assert _violation(_falsify(df, seq, kind="endow")) == ("endowment", seq)


def test_rent_elsewhere_than_the_treasury_is_flagged_by_the_audit() -> None:
    """Rent is paid to the treasury."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "rent", src=ALICE)
    assert _violation(_falsify(df, seq, dst=BOB)) == ("rent", seq)


def test_liquidation_without_a_close_is_flagged_by_the_audit() -> None:
    """A liquidation settles an account that closes in the same transaction."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "rent", src=ALICE)
    assert _violation(_falsify(df, seq, kind="liquidate")) == ("liquidation", seq)


def test_dividend_to_another_than_the_parent_is_flagged_by_the_audit() -> None:
    """A dividend goes from a child to the parent that endowed it, and to nobody else."""
    df = _lifecycle_frame()
    seq = _seq_of(df, "dividend")
    assert _violation(_falsify(df, seq, dst=BOB)) == ("dividend", seq)
    assert _violation(_falsify(df, seq, src=ALICE, dst=CAROL)) == ("dividend", seq)


# A property: money is conserved across random lifecycles


@dataclass
class Economy:
    """The expected books of a drawn lifecycle, kept by hand beside the ledger."""

    balances: dict[str, int] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    parent: dict[str, str] = field(default_factory=dict)
    born: int = 0
    inflow: int = 0
    """Units the environment put in (rewards and endowments)."""
    outflow: int = 0
    """Units the society gave the environment (penalties and first-state sales)."""
    episode: int = 0

    def move(self, src: str, dst: str, amount: int) -> None:
        self.balances[src] = self.balances.get(src, 0) - amount
        self.balances[dst] = self.balances.get(dst, 0) + amount
        self.inflow += amount * (src == ENVIRONMENT)
        self.outflow += amount * (dst == ENVIRONMENT)


class Script:
    """Writes a drawn lifecycle into a ledger through a bus, one transaction at a time."""

    def __init__(self, ledger: Ledger, data: st.DataObject) -> None:
        self.ledger, self.data, self.economy = ledger, data, Economy()
        self.bus, self.live = Bus(ledger), LiveBalances()
        self.bus.subscribe_all(self.live.apply, self.live.apply_batch)

    def publish(self, tx: Tx, *, batch: bool = False) -> None:
        if batch:
            self.bus.publish_batch(of_transactions([Transaction.of(tx)]))
        else:
            self.bus.publish(tx)

    def _heads(self, n: int, step: int = -1) -> Iterator[dict[str, object]]:
        first = self.ledger.next_seq
        episode = self.economy.episode if step >= 0 else -1
        return iter(
            {**head(first + i, first, step), "episode": episode, "time": 0.0} for i in range(n)
        )

    def open(self) -> None:
        """RunStart-less opening: the environment, the auctioneer and the treasury."""
        h = self._heads(3)
        self.publish([Open(**next(h), account=a) for a in (ENVIRONMENT, AUCTIONEER, TREASURY)])

    def found(self, amount: int) -> None:
        """A founding account, endowed by the environment."""
        self._birth(ENVIRONMENT, amount)

    def birth(self, amount: int) -> None:
        """A child of a live account, endowed from the parent's wealth."""
        if self.economy.live:
            parent = self.data.draw(st.sampled_from(self.economy.live))
            self._birth(parent, min(amount, max(self.economy.balances.get(parent, 0), 0)))

    def _birth(self, src: str, amount: int) -> None:
        e = self.economy
        child, e.born = f"p{e.born}", e.born + 1
        h = self._heads(2)
        self.publish([Open(**next(h), account=child), Endow(**next(h), src=src, dst=child,
                                                            amount=amount)])  # fmt: skip
        e.move(src, child, amount)
        e.live.append(child)
        if src != ENVIRONMENT:
            e.parent[child] = src

    def dividend(self, share: float) -> None:
        """A live child pays a share of its wealth to its live parent."""
        e = self.economy
        children = [c for c in e.live if e.parent.get(c) in e.live]
        if children:
            child = self.data.draw(st.sampled_from(children))
            amount = int(max(e.balances.get(child, 0), 0) * share)
            h = self._heads(1)
            self.publish([Dividend(**next(h), src=child, dst=e.parent[child], amount=amount)])
            e.move(child, e.parent[child], amount)

    def auction(self, reward: int) -> None:
        """A one-step CCV episode among some live accounts, each bid within its balance."""
        e = self.economy
        if not e.live:
            return
        bidders = self.data.draw(st.lists(st.sampled_from(e.live), min_size=1, max_size=3,
                                          unique=True))  # fmt: skip
        caps = [max(e.balances.get(a, 0), 0) for a in bidders]
        bids = [self.data.draw(st.integers(0, c)) for c in caps]
        e.episode += 1
        h = self._heads(1, step=0)
        self.publish([EpisodeStart(**next(h), task="t", mechanism="ccv", cloned=False,
                                   gamma=1.0, state=0)])  # fmt: skip
        w = max(range(len(bids)), key=lambda i: (bids[i], -i))
        price = sorted(bids)[-2] if len(bids) > 1 else 0
        winner = bidders[w]
        h = self._heads(len(bids) + 4, step=0)
        tx: Tx = [
            Bid(**next(h), account=a, primitive=i, state=0, amount=b, cap=c)
            for i, (a, b, c) in enumerate(zip(bidders, bids, caps, strict=True))
        ]
        paid = (ENVIRONMENT, winner) if reward >= 0 else (winner, ENVIRONMENT)
        tx += [
            Allocate(**next(h), account=winner, primitive=w, state=0, amount=bids[w]),
            Pay(**next(h), src=winner, dst=ENVIRONMENT, amount=price),
            Transform(
                **next(h),
                account=winner,
                primitive=w,
                state=0,
                next_state=1,
                duration=1.0,
                done=True,
            ),
            Reward(**next(h), src=paid[0], dst=paid[1], amount=abs(reward)),
        ]
        self.publish(tx)
        e.move(winner, ENVIRONMENT, price)
        e.move(*paid, abs(reward))

    def rent(self, amount: int, batch: bool) -> None:
        """Every live account pays `amount` to the treasury (in a batch or a transaction)."""
        e = self.economy
        if e.live:
            h = self._heads(len(e.live))
            self.publish([Rent(**next(h), src=a, dst=TREASURY, amount=amount) for a in e.live],
                         batch=batch)  # fmt: skip
            for a in e.live:
                e.move(a, TREASURY, amount)

    def death(self, to_creditor: bool) -> None:
        """A live account liquidates (to the treasury or another live account; a debt is
        covered from there) and closes."""
        e = self.economy
        if not e.live:
            return
        who = self.data.draw(st.sampled_from(e.live))
        others = [a for a in e.live if a != who]
        creditor = self.data.draw(st.sampled_from(others)) if to_creditor and others else TREASURY
        held = e.balances.get(who, 0)
        h = self._heads(2 if held else 1)
        tx: Tx = []
        if held:
            src, dst = (who, creditor) if held > 0 else (creditor, who)
            tx.append(Liquidate(**next(h), src=src, dst=dst, amount=abs(held)))
            e.move(src, dst, abs(held))
        tx.append(Close(**next(h), account=who, reason="bankrupt"))
        self.publish(tx)
        e.live.remove(who)


AMOUNT = st.integers(0, 1000)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("found"), AMOUNT),
        st.tuples(st.just("birth"), AMOUNT),
        st.tuples(st.just("auction"), st.integers(-500, 500)),
        st.tuples(st.just("rent"), st.integers(0, 50), st.booleans()),
        st.tuples(st.just("death"), st.booleans()),
        st.tuples(st.just("dividend"), st.floats(0, 1)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data(), steps=STEPS, on_disk=st.booleans())
def test_money_is_conserved_across_random_lifecycles(
    data: st.DataObject, steps: list[tuple[object, ...]], on_disk: bool
) -> None:
    """Money inside the society is tagged inflows minus outflows; replay == live; audit clean."""
    with tempfile.TemporaryDirectory() as d:
        ledger = DiskLedger(Path(d), batch_events=5) if on_disk else MemoryLedger()
        script = Script(ledger, data)
        script.open()
        for name, *args in steps:
            getattr(script, str(name))(*args)
        ledger.flush()
        replayed, e = replay(ledger), script.economy
        inside = sum(v for a, v in replayed.items() if a not in (ENVIRONMENT, AUCTIONEER))
        assert inside == e.inflow - e.outflow
        assert _held(replayed) == _held(script.live.balances) == _held(ledger.balances())
        assert _held(replayed) == _held(e.balances)
        assert all(replayed.get(a, 0) == 0 for a in ledger.closed)
        report = audit(ledger)
        assert report.ok, report.violation
        ledger.close()


def _held(balances: dict[str, int]) -> dict[str, int]:
    """The accounts holding money (a fold may or may not list an account at 0)."""
    return {a: v for a, v in balances.items() if v}
