"""Where each account's money came from: rewards, sales, purchases and mint."""

from __future__ import annotations

import polars as pl

from ledger.units import UNIT

_PARTS = ("rewards", "sales", "purchases", "mint")


def income(events: pl.LazyFrame) -> pl.DataFrame:
    """Per account, in units: `rewards` (received minus paid back as penalties), `sales`
    (auction prices received), `purchases` (prices paid), `mint` (credit minted to it, minus
    what it minted as the auctioneer) and `net` = rewards + sales - purchases + mint, its
    balance. Every opened account has a row; sorted by account; `net_credit` in credit."""
    moves = events.filter(pl.col("kind").is_in(["reward", "pay", "mint"])).select(
        "kind", "src", "dst", "amount"
    )
    # Int128 sums: each amount fits int64, an account's total over a long run may not.
    into = moves.select(pl.col("dst").alias("account"), "kind", pl.col("amount").cast(pl.Int128))
    out = moves.select(pl.col("src").alias("account"), "kind", (-pl.col("amount")).cast(pl.Int128))
    signed = pl.concat([into, out])
    part = {
        "rewards": pl.col("kind") == "reward",
        "sales": (pl.col("kind") == "pay") & (pl.col("amount") > 0),
        "purchases": (pl.col("kind") == "pay") & (pl.col("amount") < 0),
        "mint": pl.col("kind") == "mint",
    }
    sums = signed.group_by("account").agg(
        *(pl.col("amount").filter(cond).sum().alias(name) for name, cond in part.items())
    )
    opened = events.filter(pl.col("kind") == "open").select("account")
    table = (
        pl.concat([opened, sums.select("account")])
        .unique()
        .join(sums, on="account", how="left")
        .with_columns(pl.col(p).fill_null(0) for p in _PARTS)
        .with_columns(pl.col("purchases").abs())
        .with_columns(
            (pl.col("rewards") + pl.col("sales") - pl.col("purchases") + pl.col("mint")).alias(
                "net"
            )
        )
        .with_columns((pl.col("net").cast(pl.Float64) / UNIT).alias("net_credit"))
        .sort("account")
    )
    return table.collect()
