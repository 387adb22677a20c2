"""The auction variant's market: one row per auction, prices, winners, bids against Q*."""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.typing import NDArray

from ledger.units import UNIT


def auctions(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per auction (a transaction with an `allocate`): tx, episode, step, time, state,
    the winner's account and primitive, its bid, the price paid (null under a mechanism that
    charges none) and the credit minted (0 if none), all amounts in units."""
    won = events.filter(pl.col("kind") == "allocate").select(
        "tx",
        "episode",
        "step",
        "time",
        "state",
        pl.col("account").alias("winner"),
        "primitive",
        pl.col("amount").alias("bid"),
    )
    paid = events.filter(pl.col("kind") == "pay").select("tx", pl.col("amount").alias("price"))
    minted = (
        events.filter(pl.col("kind") == "mint")
        .group_by("tx")
        .agg(pl.col("amount").sum().alias("minted"))
    )
    return (
        won.join(paid, on="tx", how="left")
        .join(minted, on="tx", how="left")
        .with_columns(pl.col("minted").fill_null(0))
        .sort("tx")
    )


def prices(
    events: pl.LazyFrame, episodes_per_point: int = 1, per_state: bool = True
) -> pl.DataFrame:
    """Mean, min and max price (credit) per state over time: one row per state and block of
    `episodes_per_point` episodes (named by its first episode); `per_state` False, one row
    per block, its state null (every state: a task whose states do not recur)."""
    # The rows of `auctions` with a price; the mint it joins adds no row and no column used.
    won, paid = _sales(events, "episode", "state")
    block = (pl.col("episode") // episodes_per_point * episodes_per_point).alias("episode")
    price = pl.col("price").cast(pl.Float64)
    return (
        won.join(paid.filter(pl.col("price").is_not_null()), on="tx", how="inner")
        .group_by(block, _state(per_state))
        .agg(
            (price.mean() / UNIT).alias("mean_price"),
            (price.min() / UNIT).alias("min_price"),
            (price.max() / UNIT).alias("max_price"),
            pl.len().alias("auctions"),
        )
        .sort("episode", "state")
        # Speed: about one group per 4 auctions; the streaming engine joins and groups them
        # in parallel (measured 0.68 s of CPU against 0.79 s in memory, and 0.8x the memory).
        .collect(engine="streaming")
    )


def winners(events: pl.LazyFrame, since_episode: int = 0, per_state: bool = True) -> pl.DataFrame:
    """Which primitive wins each state, from episode `since_episode` on: wins and their share
    of the state's auctions, most frequent winner first within a state; `per_state` False,
    over every state at once (state null)."""
    # One allocation per auction (the audit's `sequence` rule), so counting allocations
    # counts auctions; the streaming engine folds them without holding them (memory flat).
    won = events.filter((pl.col("kind") == "allocate") & (pl.col("episode") >= since_episode))
    return (
        won.group_by(_state(per_state), "primitive")
        .agg(pl.len().alias("wins"))
        .with_columns((pl.col("wins") / pl.col("wins").sum().over("state")).alias("share"))
        .sort("state", "wins", "primitive", descending=[False, True, False])
        .collect(engine="streaming")
    )


def _state(per_state: bool) -> pl.Expr:
    """The state a row is tallied under: its own, or null for every state at once.

    Per state where states recur (the built-in tasks); at once where each state id names one
    step of one episode (a Gymnasium env: `market.gym_tasks`), so that a table per state would
    grow with the ledger and show every state won once (`analyses.report.states_recur`).
    """
    return pl.col("state") if per_state else pl.lit(None, dtype=pl.Int64).alias("state")


def _sales(events: pl.LazyFrame, *columns: str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The allocations (tx, *columns) and the payments (tx, price in units), read together
    in one scan."""
    won = pl.col("kind") == "allocate"
    rows = (
        # Speed: two comparisons cost less than a membership test (which hashes each kind).
        events.filter(won | (pl.col("kind") == "pay"))
        # Speed: one scan for both (each column is decoded once), keeping a boolean, not the
        # kind's string, to tell them apart.
        .select(won.alias("won"), "tx", *columns, "amount")
        # The in-memory engine here: as fast, and it holds the rows in 0.6 times the memory.
        .collect()
    )
    # Speed: a ledger's events are stored in seq order, so tx ascends; flagged sorted (once
    # checked), joins on tx merge instead of hashing (measured 3-8x faster).
    tx = pl.col("tx").set_sorted() if rows["tx"].is_sorted() else pl.col("tx")
    frame = rows.lazy()
    allocations = frame.filter(pl.col("won")).select(tx, *columns)
    payments = frame.filter(~pl.col("won")).select(tx, pl.col("amount").alias("price"))
    return allocations, payments


def bids(events: pl.LazyFrame, since_episode: int = 0, per_state: bool = True) -> pl.DataFrame:
    """Every primitive's mean bid (credit) per state, from episode `since_episode` on;
    `per_state` False, over every state at once (state null)."""
    return (
        events.filter((pl.col("kind") == "bid") & (pl.col("episode") >= since_episode))
        .group_by(_state(per_state), "primitive")
        .agg(
            (pl.col("amount").cast(pl.Float64).mean() / UNIT).alias("mean_bid"),
            pl.len().alias("bids"),
        )
        .sort("state", "primitive")
        .collect(engine="streaming")
    )


def bids_against(bid_table: pl.DataFrame, q_star: NDArray[np.float64]) -> pl.DataFrame:
    """A `bids` table beside Q*(state, primitive) (a (states, primitives) array, as
    `market.tasks.Task.q_star` gives) and the gap mean_bid - Q*."""
    q = q_star[bid_table["state"].to_numpy(), bid_table["primitive"].to_numpy()]
    return bid_table.with_columns(pl.Series("q_star", q)).with_columns(
        (pl.col("mean_bid") - pl.col("q_star")).alias("gap")
    )
