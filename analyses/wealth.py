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
