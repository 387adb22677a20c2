"""Where each account's money came from: rewards, sales, purchases and mint."""

from __future__ import annotations

import polars as pl

from analyses.flows import flows, postings
from ledger.units import UNIT

_PARTS = ("rewards", "sales", "purchases", "mint")


def income(events: pl.LazyFrame) -> pl.DataFrame:
    """Per account, in units: `rewards` (received minus paid back as penalties), `sales`
    (auction prices received), `purchases` (prices paid), `mint` (credit minted to it, minus
    what it minted as the auctioneer) and `net` = rewards + sales - purchases + mint, its
    balance. Every opened account has a row; sorted by account; `net_credit` in credit."""
    # Speed: the transfers are summed per (src, dst, kind, sign) in the scan, so the parts
    # below fold a few rows. The sign keeps sales and purchases apart: a positive amount is a
    # sale to its payee and a purchase by its payer, a negative one the reverse.
    positive = (pl.col("amount") > 0).alias("positive")
    signed = postings(flows(events, pl.col("kind"), positive), "kind", "positive")
    part = {
        "rewards": pl.col("kind") == "reward",
        "sales": (pl.col("kind") == "pay") & (pl.col("amount") > 0),
        "purchases": (pl.col("kind") == "pay") & (pl.col("amount") < 0),
        "mint": pl.col("kind") == "mint",
    }
    return (
        signed.group_by("account")
        .agg(*(pl.col("amount").filter(cond).sum().alias(name) for name, cond in part.items()))
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
