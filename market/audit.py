"""The audit: every rule of the books and of the mechanisms, checked from stored events alone.

Rules (a violation names the first broken one in sequence order):
  chain         every committed batch hashes to its chain link (on-disk ledgers)
  sequence      seq is 0, 1, 2, ... ; each transaction is a contiguous run of it; each
                episode is opened and its auctions are steps 0, 1, 2, ...
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

Every check is a Polars query over the whole ledger, so an audit costs a few passes over
columns, not a Python loop over events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from ledger.disk import DiskLedger
from ledger.errors import CorruptLedger
from ledger.events import (
    AUCTION_KINDS,
    AUCTIONEER,
    ENVIRONMENT,
    LIFECYCLE_KINDS,
    SYSTEM,
    TRANSFER_KINDS,
    TREASURY,
)
from ledger.replay import postings, replay_frame
from ledger.store import Ledger

_C = pl.col
_MONEY = sorted(AUCTION_KINDS)
"""The transfers only an auction (or a control step) may make."""
_AUDITED = [
    "seq", "tx", "kind", "episode", "step", "account", "src", "dst", "amount", "mechanism", "cap",
    "episodes",
]  # fmt: skip
"""The columns the rules read."""
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
    closed: bool = False
    violation: Violation | None = None
    torn_tail: list[str] = field(default_factory=list)
    per_mechanism: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule is broken."""
        return self.violation is None


def audit(ledger: Ledger, expected_head: str | None = None) -> AuditReport:
    """Audit a ledger; on disk, the hash chain is checked before any event is read.

    `expected_head` is the chain head recorded elsewhere when the run finished: a chain that
    was cut short, or rebuilt after an edit, ends at another head.
    """
    report = AuditReport()
    if isinstance(ledger, DiskLedger):
        report.torn_tail = list(ledger.torn_tail)
        try:
            ledger.check_chain()
        except CorruptLedger as e:
            report.violation = Violation(e.seq, "chain", "bytes matching the chain", str(e))
            return report
        if expected_head is not None and ledger.head != expected_head:
            report.violation = Violation(
                ledger.next_seq,
                "chain",
                f"the recorded head {expected_head[:16]}",
                f"head {ledger.head[:16]} (committed batches removed or rewritten)",
            )
            return report
    return audit_frame(ledger.scan().select(_AUDITED).collect(), report)


def audit_frame(df: pl.DataFrame, report: AuditReport | None = None) -> AuditReport:
    """Audit a frame of events in the ledger schema."""
    report = report or AuditReport()
    for col in ("cap", "episodes"):  # cap: a frame read from a ledger before issue 8
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias(col))
    report.events = df.height
    if df.is_empty():
        report.violation = Violation(0, "sequence", "a run's events", "an empty ledger")
        return report
    events = df.lazy()
    auctions = _auctions(events).collect()
    lives = _lives(events)
    transfers = _transfers(events, lives).collect().lazy()
    economy = df.filter((_C("kind") == "close") | _C("cap").is_not_null()).height > 0
    held = _held(events) if economy else pl.DataFrame()  # read only by economy rules
    found = [
        _first(events.with_row_index("_at"), _sequence_rules()),
        _first(transfers, _balance_rules()),
        _first(
            events.filter(_C("kind").is_in(_MONEY))
            .join(auctions.lazy(), "tx", "anti")
            .join(events.filter(_C("kind") == "transition").select("tx"), "tx", "anti"),
            [
                Rule(
                    "auction-only",
                    pl.lit(True),
                    pl.lit("money moving in an auction or a control step"),
                    pl.format("{} outside any auction or control step", "kind"),
                )
            ],
        ),
        _first(auctions.lazy(), _auction_rules()),
        _first(_addressed(events, lives), _lifecycle_rules()),
        _first(events, _budget_rules()),
        _caps_off_balances(events, held),
        _first(transfers, _economy_rules()),
        _closed_with_money(events, held),
        _run_ends(df),
        *_closing(df, report),
    ]
    report.violation = min((v for v in found if v), key=lambda v: v.seq, default=None)
    report.closed = df.filter(_C("kind") == "run_end").height > 0
    _totals(df, auctions, report)
    return report


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
    starts = (_C("tx") == _C("seq")) | (_C("tx") == _C("tx").shift(1))
    return [
        Rule("sequence", _C("seq") != _C("_at"), _C("_at"), _C("seq")),
        Rule("sequence", ~starts, pl.lit("a contiguous transaction"), _C("tx")),
    ]


def _lives(events: pl.LazyFrame) -> pl.DataFrame:
    """Per account: the seq and tx of its first open (`o`, `o_tx`) and close (`c`, `c_tx`),
    and who endowed it first (`parent`: the environment for a founder)."""
    first = {"o": "open", "c": "close"}
    parents = (
        events.filter(_C("kind") == "endow")
        .group_by("dst")
        .agg(_C("src").sort_by("seq").first().alias("parent"))
        .rename({"dst": "account"})
    )
    return (
        events.filter(_C("kind").is_in(list(first.values())))
        .group_by("account")
        .agg(
            _C(col).filter(_C("kind") == kind).min().alias(name + suffix)
            for name, kind in first.items()
            for col, suffix in (("seq", ""), ("tx", "_tx"))
        )
        .join(parents, "account", "left")
        .collect()
    )


def _transfers(events: pl.LazyFrame, lives: pl.DataFrame) -> pl.LazyFrame:
    """Every transfer with the lives of its payer (`o_src`, `c_tx_src`, ...) and payee."""
    moves = events.filter(_C("kind").is_in(sorted(TRANSFER_KINDS)))
    for who in ("src", "dst"):
        named = lives.lazy().rename({n: f"{n}_{who}" for n in lives.columns if n != "account"})
        moves = moves.join(named.rename({"account": who}), who, "left")
    return moves


def _addressed(events: pl.LazyFrame, lives: pl.DataFrame) -> pl.LazyFrame:
    """Every (event, account it is addressed to) but statements, with that account's life.

    The control variant's `system` is a public address, not an account: it holds no money.
    """
    named = [
        events.filter(_C(c).is_not_null() & (_C("kind") != "balance")).select(
            "seq", "kind", _C(c).alias("account")
        )
        for c in ("account", "src", "dst")
    ]
    return pl.concat(named).filter(_C("account") != SYSTEM).join(lives.lazy(), "account", "left")


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


def _held(events: pl.LazyFrame) -> pl.DataFrame:
    """Each account's balance after every event that moved it: seq, account, held."""
    return (
        postings(events)
        .group_by("seq", "account")
        .agg(_C("delta").sum())
        .sort("seq")
        .with_columns(_C("delta").cast(pl.Int128).cum_sum().over("account").alias("held"))
        .select("seq", "account", "held")
        .collect()
    )


def _closed_with_money(events: pl.LazyFrame, held: pl.DataFrame) -> Violation | None:
    """The first close of an account whose balance just before it is not 0."""
    closes = events.filter(_C("kind") == "close").select("seq", "account").collect()
    if closes.is_empty():
        return None
    found = (
        closes.sort("seq")
        .join_asof(held, on="seq", by="account", strategy="backward", check_sortedness=False)
        .filter(_C("held").fill_null(0) != 0)
    )
    if found.is_empty():
        return None
    seq, account, amount = found.row(0)
    return Violation(seq, "lifecycle", f"{account} closing at 0", f"balance {amount}")


def _caps_off_balances(events: pl.LazyFrame, held: pl.DataFrame) -> Violation | None:
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
        bids.join_asof(
            held.rename({"seq": "before"}),
            on="before",
            by="account",
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns(_C("held").fill_null(0).clip(lower_bound=0).alias("budget"))
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


def _auctions(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per auction transaction: its bids' summary and what was recorded."""
    kind = _C("kind")

    def one(k: str, **cols: str) -> pl.LazyFrame:
        return events.filter(kind == k).select("tx", **{n: _C(c) for n, c in cols.items()})

    bids = events.filter(kind == "bid").select("seq", "tx", "episode", "step", "account", "amount")
    starts = events.filter(kind == "episode_start").select("episode", "mechanism")
    same_episode = _C("episode") == _C("episode").shift(1)
    return (
        _bid_summary(bids.collect())
        .lazy()
        .join(one("allocate", winner="account", won="amount", alloc_at="seq"), "tx", "left")
        .join(one("pay", paid="amount", payer="src", payee="dst", pay_at="seq"), "tx", "left")
        .join(one("mint", minted="amount", minter="src", mintee="dst", mint_at="seq"), "tx", "left")
        .join(one("reward", r_src="src", r_dst="dst", r_amount="amount", r_at="seq"), "tx", "left")
        .join(starts, "episode", "left")
        .with_columns(_C("tx").is_duplicated().alias("repeated"))
        .sort("episode", "seq")  # each episode's auctions in order, episodes one after another
        .with_columns(
            pl.when(same_episode).then(_C("winner").shift(1)).alias("prev_winner"),
            pl.when(same_episode).then(_C("step").shift(1)).alias("prev_step"),
        )
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
        empty = {"b1": pl.Int64, "b2": pl.Int64, "argmax": pl.String}
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


def _auction_rules() -> list[Rule]:
    mech, step, fmt = _C("mechanism"), _C("step"), pl.format
    price = (
        pl.when(mech.is_in(["ccv", "v"]))
        .then(_C("b2"))
        .when(mech.is_in(["bb", "fp"]))
        .then(_C("b1"))
        .otherwise(None)
    )
    mint = pl.when((mech == "v") & (step > 0)).then(_C("b1") - _C("b2")).otherwise(0)
    seller = pl.when(step == 0).then(pl.lit(ENVIRONMENT)).otherwise(_C("prev_winner"))
    in_order = (
        pl.when(step == 0).then(_C("prev_step").is_null()).otherwise(_C("prev_step") == step - 1)
    )
    paid = _C("paid").is_not_null()
    pay_ok = pl.when(price.is_null()).then(~paid).otherwise(paid & (_C("paid") == price))
    minted = _C("minted").is_not_null()
    mint_ok = (
        pl.when(minted)
        .then((_C("minted") == mint) & (_C("minter") == AUCTIONEER) & (_C("mintee") == seller))
        .otherwise(mint == 0)
    )
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


def _run_ends(df: pl.DataFrame) -> Violation | None:
    """The first RunEnd whose episode count is not the number of episodes that ended since
    its run started."""
    marks = df.filter(_C("kind").is_in(["run_start", "episode_end", "run_end"])).select(
        "seq", "kind", "episodes"
    )
    ended = 0
    for seq, kind, episodes in marks.iter_rows():
        if kind == "run_start":
            ended = 0
        elif kind == "episode_end":
            ended += 1
        elif episodes != ended:
            return Violation(seq, "run-end", f"{ended} episodes ended in the run", str(episodes))
    return None


def _closing(df: pl.DataFrame, report: AuditReport) -> list[Violation | None]:
    statements = df.filter(_C("kind") == "balance")
    found: list[Violation | None] = []
    for (tx,), group in statements.group_by("tx", maintain_order=True):
        assert isinstance(tx, int)
        replayed = replay_frame(df.lazy(), upto=tx - 1)
        for seq, account, amount in group.select("seq", "account", "amount").iter_rows():
            report.closing_checked += 1
            if replayed.get(account, 0) != amount:
                found.append(Violation(seq, "closing", str(replayed.get(account, 0)), str(amount)))
                break
    return found


def _totals(df: pl.DataFrame, a: pl.DataFrame, report: AuditReport) -> None:
    report.auctions = a.height
    report.episodes = df.filter(_C("kind") == "episode_start").height
    signed = pl.when(_C("r_src") == ENVIRONMENT).then(_C("r_amount")).otherwise(-_C("r_amount"))
    per = (
        a.group_by("mechanism")
        .agg(
            _C("episode").n_unique().alias("episodes"),
            pl.len().alias("auctions"),
            signed.sum().alias("rewards_in"),
            _C("paid").sum().alias("paid"),
            _C("minted").sum().alias("minted"),
        )
        .sort("mechanism")
    )
    report.per_mechanism = per.to_dicts()
    report.rewards_in = int(per["rewards_in"].sum()) if per.height else 0
    report.minted = int(per["minted"].sum()) if per.height else 0
    _lifecycle_totals(df, report)


def _lifecycle_totals(df: pl.DataFrame, report: AuditReport) -> None:
    rows = df.filter(_C("kind").is_in(["open", *sorted(LIFECYCLE_KINDS)]))
    per = {
        kind: (count, int(amount or 0))
        for kind, count, amount in rows.group_by("kind")
        .agg(pl.len(), _C("amount").cast(pl.Int128).sum())
        .iter_rows()
    }
    report.opens, report.closes = per.get("open", (0, 0))[0], per.get("close", (0, 0))[0]
    report.endowments, report.endowed = per.get("endow", (0, 0))
    report.rent = per.get("rent", (0, 0))[1]
    report.liquidations, report.liquidated = per.get("liquidate", (0, 0))
    report.dividends, report.dividends_paid = per.get("dividend", (0, 0))
    from_environment = (_C("kind") == "endow") & (_C("src") == ENVIRONMENT)
    report.endowed_in = int(rows.filter(from_environment)["amount"].cast(pl.Int128).sum() or 0)
