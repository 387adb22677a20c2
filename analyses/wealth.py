"""Wealth and returns, folded from a ledger's stored events with Polars."""

from __future__ import annotations

import polars as pl

from analyses.flows import checkpoint_flows, flows, postings
from ledger.units import UNIT


def wealth(events: pl.LazyFrame, upto: int | None = None) -> pl.DataFrame:
    """Every account's balance after event `upto` (all events when None), in units and credit.

    Accounts opened but never paid appear with 0; rows are sorted by account.
    """
    if upto is not None:
        events = events.filter(pl.col("seq") <= upto)
    # Speed: the transfers are summed per (src, dst) in the scan; this folds a few rows.
    return (
        postings(flows(events))
        .group_by("account")
        .agg(pl.col("amount").sum().alias("units"))
        .with_columns((pl.col("units").cast(pl.Float64) / UNIT).alias("credit"))
        .sort("account")
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
    # Speed: a ledger's scan is ordered by seq, so its last row holds the largest seq, and
    # reading it reads only the last segment. The one scan below finds the true largest seq
    # too; the work is redone with it if the frame was not ordered.
    last = events.select(pl.col("seq").last()).collect().item()
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
    flows = checkpoint_flows(events, _bucket(points, last))
    if (largest := flows.groups["seq"].max()) != last:
        assert isinstance(largest, int)
        flows = checkpoint_flows(events, _bucket(points, largest))
    closes = (
        flows.groups.group_by("bucket")
        .agg(pl.col("seq").max(), pl.col("time").max())
        .sort("bucket")
    )
    moved = postings(flows, "bucket").group_by("account", "bucket").agg(pl.col("amount").sum())
    grid = moved.select("account").unique().join(closes, how="cross")
    return (
        grid.join(moved, on=["account", "bucket"], how="left")
        .sort("account", "bucket")
        .with_columns(pl.col("amount").fill_null(0).cum_sum().over("account").alias("units"))
        .select(
            "account",
            "seq",
            "time",
            "units",
            (pl.col("units").cast(pl.Float64) / UNIT).alias("credit"),
        )
    )


def _bucket(points: int, last: int) -> pl.Expr:
    """Each event's checkpoint (0 to points - 1) when the largest seq is `last`."""
    width = -(-(last + 1) // points)  # ceil: every seq falls in one of `points` buckets
    return (pl.col("seq") // width).alias("bucket")
