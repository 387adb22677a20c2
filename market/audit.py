"""The audit: every rule of the books and of the mechanisms, checked from stored events alone.

Rules, in the order a violation is reported (the first by sequence number wins):
  chain         every committed batch hashes to its chain link (on-disk ledgers)
  sequence      seq is 0, 1, 2, ... and each transaction is a contiguous run of it
  balance       every money event is a whole transfer between opened accounts
  auction-only  money moves only inside an auction transaction
  allocation    the winner is the argmax of the recorded bids (ties: lowest bidder id)
  price         the price follows the episode's recorded mechanism
  payer         the payer is the winner
  seller        the payee is the previous winner (the environment at step 0)
  mint          credit is minted only by the auctioneer, only under `v` after the first sale,
                exactly b1 - b2
  reward        one reward per auction, between the environment and the winner
  closing       every balance statement equals the replay of all events before it
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from ledger.events import AUCTIONEER, ENVIRONMENT, TRANSFER_KINDS
from ledger.replay import replay_frame
from ledger.store import Ledger

_C = pl.col


@dataclass(frozen=True)
class Violation:
    """The first broken rule: where, which rule, what was expected and what was found."""

    seq: int
    rule: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.rule}: expected {self.expected}, found {self.found}"


@dataclass
class AuditReport:
    """The verdict of an audit and the totals it read off the books."""

    events: int = 0
    auctions: int = 0
    episodes: int = 0
    rewards_in: int = 0
    minted: int = 0
    closing_checked: int = 0
    violation: Violation | None = None
    torn_tail: list[str] = field(default_factory=list)
    per_mechanism: list[dict[str, object]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule is broken."""
        return self.violation is None


def audit(ledger: Ledger) -> AuditReport:
    """Audit a ledger; a broken hash chain is reported as the first violation."""
    from ledger.disk import DiskLedger
    from ledger.errors import CorruptLedger

    report = AuditReport()
    if isinstance(ledger, DiskLedger):
        report.torn_tail = list(ledger.torn_tail)
        try:
            ledger.check_chain()
        except CorruptLedger as e:
            report.violation = Violation(-1, "chain", "stored bytes matching the chain", str(e))
            return report
    return audit_frame(ledger.scan().collect(), report)


def audit_frame(df: pl.DataFrame, report: AuditReport | None = None) -> AuditReport:
    """Audit a frame of events in the ledger schema."""
    report = report or AuditReport()
    report.events = df.height
    found = [*_sequence(df), *_balance(df)]
    auctions = _auctions(df)
    found += _auction_rules(df, auctions)
    found += _closing(df, report)
    report.violation = min(found, key=lambda v: v.seq, default=None)
    _totals(df, auctions, report)
    return report


def _first(
    df: pl.DataFrame, bad: pl.Expr, rule: str, expected: pl.Expr, got: pl.Expr
) -> list[Violation]:
    """The first row where `bad` holds, as a violation (an empty list when there is none)."""
    rows = df.filter(bad.fill_null(True)).sort("seq").head(1)
    if rows.is_empty():
        return []
    r = rows.select(_C("seq"), expected.cast(pl.String).alias("e"), got.cast(pl.String).alias("f"))
    return [Violation(int(r["seq"][0]), rule, str(r["e"][0]), str(r["f"][0]))]


def _sequence(df: pl.DataFrame) -> list[Violation]:
    d = df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_at"))
    out = _first(d, _C("seq") != _C("_at"), "sequence", _C("_at"), _C("seq"))
    starts = (_C("tx") == _C("seq")) | (_C("tx") == _C("tx").shift(1))
    return out + _first(d, ~starts, "sequence", pl.lit("a contiguous transaction"), _C("tx"))


def _balance(df: pl.DataFrame) -> list[Violation]:
    opens = df.filter(_C("kind") == "open").group_by("account").agg(_C("seq").min().alias("o"))
    t = (
        df.filter(_C("kind").is_in(list(TRANSFER_KINDS)))
        .join(opens.rename({"account": "src", "o": "o_src"}), on="src", how="left")
        .join(opens.rename({"account": "dst", "o": "o_dst"}), on="dst", how="left")
    )
    whole = _C("amount").is_not_null() & (_C("amount") >= 0)
    self_transfer = (_C("src") == _C("dst")) & (_C("kind") != "pay")
    opened = (_C("o_src") < _C("seq")) & (_C("o_dst") < _C("seq"))
    return [
        *_first(
            t,
            ~whole | self_transfer,
            "balance",
            pl.lit("a whole transfer"),
            pl.format("{} {} -> {} of {}", "kind", "src", "dst", "amount"),
        ),
        *_first(
            t,
            ~opened,
            "balance",
            pl.lit("accounts opened before use"),
            pl.format("{} -> {}", "src", "dst"),
        ),
    ]


def _auctions(df: pl.DataFrame) -> pl.DataFrame:
    """One row per auction transaction: its bids' summary and what was recorded."""
    kind, amount = _C("kind"), _C("amount")
    bids = (
        df.filter(kind == "bid")
        .group_by("tx", maintain_order=True)
        .agg(
            _C("seq").first(),
            _C("episode").first(),
            _C("step").first(),
            pl.len().alias("n"),
            amount.max().alias("b1"),
            amount.top_k(2).min().alias("b2"),
            _C("account").filter(amount == amount.max()).first().alias("argmax"),
        )
    )
    bids = bids.with_columns(pl.when(_C("n") > 1).then(_C("b2")).otherwise(0).alias("b2"))

    def one(k: str, **cols: pl.Expr) -> pl.DataFrame:
        return df.filter(kind == k).group_by("tx").agg(pl.len().alias(f"{k}_n"), **cols)

    a = (
        bids.join(one("allocate", winner=_C("account").first(), won=amount.first()), "tx", "left")
        .join(
            one("pay", paid=amount.first(), payer=_C("src").first(), payee=_C("dst").first()),
            "tx",
            "left",
        )
        .join(
            one("mint", minted=amount.sum(), minter=_C("src").first(), mintee=_C("dst").first()),
            "tx",
            "left",
        )
        .join(
            one(
                "reward", r_src=_C("src").first(), r_dst=_C("dst").first(), r_amount=amount.first()
            ),
            "tx",
            "left",
        )
        .join(df.filter(kind == "episode_start").select("episode", "mechanism"), "episode", "left")
        .sort("seq")
    )
    prev = pl.struct("winner", "step").shift(1).over("episode")
    return a.with_columns(
        prev.struct.field("winner").alias("prev_winner"),
        prev.struct.field("step").alias("prev_step"),
        _C("minted").fill_null(0),
        *(_C(f"{k}_n").fill_null(0) for k in ("allocate", "pay", "mint", "reward")),
    )


def _auction_rules(df: pl.DataFrame, a: pl.DataFrame) -> list[Violation]:
    mech, step = _C("mechanism"), _C("step")
    price = (
        pl.when(mech.is_in(["ccv", "v"]))
        .then(_C("b2"))
        .when(mech.is_in(["bb", "fp"]))
        .then(_C("b1"))
        .otherwise(None)
    )
    mint = pl.when((mech == "v") & (step > 0)).then(_C("b1") - _C("b2")).otherwise(0)
    seller = pl.when(step == 0).then(pl.lit(ENVIRONMENT)).otherwise(_C("prev_winner"))
    contiguous = (
        pl.when(step == 0).then(_C("prev_step").is_null()).otherwise(_C("prev_step") == step - 1)
    )
    reward_ok = (_C("reward_n") == 1) & (
        ((_C("r_src") == ENVIRONMENT) & (_C("r_dst") == _C("winner")))
        | ((_C("r_dst") == ENVIRONMENT) & (_C("r_src") == _C("winner")))
    )
    fmt = pl.format
    money = df.filter(_C("kind").is_in(list(TRANSFER_KINDS))).join(a.select("tx"), "tx", "anti")
    pay_ok = (
        pl.when(price.is_null())
        .then(_C("pay_n") == 0)
        .otherwise((_C("pay_n") == 1) & (_C("paid") == price))
    )
    mint_ok = (_C("minted") == mint) & (
        (_C("mint_n") == 0)
        | ((_C("mint_n") == 1) & (_C("minter") == AUCTIONEER) & (_C("mintee") == seller))
    )
    return [
        *_first(
            money,
            pl.lit(True),
            "auction-only",
            pl.lit("money moving in an auction"),
            fmt("{} outside any auction", "kind"),
        ),
        *_first(
            a,
            mech.is_null() | ~contiguous,
            "sequence",
            pl.lit("an opened episode, step by step"),
            fmt("episode {} step {}", "episode", "step"),
        ),
        *_first(
            a,
            (_C("allocate_n") != 1) | (_C("winner") != _C("argmax")) | (_C("won") != _C("b1")),
            "allocation",
            fmt("{} at {}", "argmax", "b1"),
            fmt("{} at {}", "winner", "won"),
        ),
        *_first(a, ~pay_ok, "price", fmt("{} under {}", price, mech), _C("paid")),
        *_first(
            a, (_C("pay_n") > 0) & (_C("payer") != _C("winner")), "payer", _C("winner"), _C("payer")
        ),
        *_first(a, (_C("pay_n") > 0) & (_C("payee") != seller), "seller", seller, _C("payee")),
        *_first(
            a,
            ~mint_ok,
            "mint",
            fmt("{} to {}", mint, seller),
            fmt("{} from {} to {}", "minted", "minter", "mintee"),
        ),
        *_first(
            a,
            ~reward_ok,
            "reward",
            pl.lit("environment <-> winner"),
            fmt("{} -> {}", "r_src", "r_dst"),
        ),
    ]


def _closing(df: pl.DataFrame, report: AuditReport) -> list[Violation]:
    statements = df.filter(_C("kind") == "balance")
    found: list[Violation] = []
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
        a.group_by("mechanism", maintain_order=True)
        .agg(
            pl.len().alias("auctions"),
            _C("episode").n_unique().alias("episodes"),
            signed.sum().alias("rewards_in"),
            _C("paid").sum().alias("paid"),
            _C("minted").sum().alias("minted"),
        )
        .sort("mechanism")
    )
    report.per_mechanism = per.to_dicts()
    report.rewards_in = int(per["rewards_in"].sum()) if per.height else 0
    report.minted = int(per["minted"].sum()) if per.height else 0
