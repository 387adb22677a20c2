"""Wealth and returns, folded from a ledger's stored events with Polars."""

from __future__ import annotations

import polars as pl

from ledger.replay import postings
from ledger.units import UNIT


def wealth(events: pl.LazyFrame, upto: int | None = None) -> pl.DataFrame:
    """Every account's balance after event `upto` (all events when None), in units and credit.

    Accounts opened but never paid appear with 0; rows are sorted by account.
    """
    if upto is not None:
        events = events.filter(pl.col("seq") <= upto)
    opened = events.filter(pl.col("kind") == "open").select("account").unique()
    sums = postings(events).group_by("account").agg(pl.col("delta").cast(pl.Int128).sum())
    return (
        opened.join(sums, on="account", how="full", coalesce=True)
        .select("account", pl.col("delta").fill_null(0).alias("units"))
        .with_columns((pl.col("units").cast(pl.Float64) / UNIT).alias("credit"))
        .sort("account")
        .collect()
    )


def returns(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per finished episode: its number, steps and undiscounted return (units, credit)."""
    return (
        events.filter(pl.col("kind") == "episode_end")
        .select("episode", "steps", pl.col("episode_return").alias("units"))
        .with_columns((pl.col("units") / UNIT).alias("credit"))
        .sort("episode")
        .collect()
    )


def wealth_over_time(events: pl.LazyFrame, points: int = 100) -> pl.DataFrame:
    """Every account's balance at `points` checkpoints spread evenly over the ledger.

    Checkpoint c closes after event `seq` (the last of its share of the sequence numbers);
    `time` is the SimPy time of that event. One row per account and checkpoint, sorted by
    account then seq, with the balance in units and credit. Accounts appear from the first
    checkpoint on (0 before their first posting).
    """
    if points < 1:
        raise ValueError(f"points must be at least 1; got {points}")
    last = events.select(pl.col("seq").max()).collect().item()
    if last is None:
        return pl.DataFrame(
            schema={
                "account": pl.String,
                "seq": pl.Int64,
                "time": pl.Float64,
                "units": pl.Int128,
                "credit": pl.Float64,
            }
        )
    width = -(-(last + 1) // points)  # ceil: every seq falls in one of `points` buckets
    bucket = (pl.col("seq") // width).alias("bucket")
    closes = (
        events.group_by(bucket)
        .agg(pl.col("seq").max(), pl.col("time").max())
        .sort("bucket")
        .collect()
    )
    moved = (
        postings(events)
        .group_by("account", bucket)
        .agg(pl.col("delta").cast(pl.Int128).sum())
        .collect()
    )
    opened = events.filter(pl.col("kind") == "open").select("account").collect()
    accounts = pl.concat([opened, moved.select("account")]).unique()
    grid = accounts.join(closes, how="cross")
    return (
        grid.join(moved, on=["account", "bucket"], how="left")
        .sort("account", "bucket")
        .with_columns(pl.col("delta").fill_null(0).cum_sum().over("account").alias("units"))
        .select(
            "account",
            "seq",
            "time",
            "units",
            (pl.col("units").cast(pl.Float64) / UNIT).alias("credit"),
        )
    )
