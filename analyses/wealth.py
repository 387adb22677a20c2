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


def returns_curve(events: pl.LazyFrame, points: int = 200) -> pl.DataFrame:
    """The learning curve in at most `points` rows, folded in the query (memory flat in the
    run's length): finished episodes in blocks of consecutive episode numbers, one row per
    block with its first episode, its episodes, and their mean, min and max return (credit).
    """
    ends, block = episode_blocks(events, points)
    credit = pl.col("episode_return").cast(pl.Float64) / UNIT
    if block is None:
        schema = {"episode": pl.Int64, "episodes": pl.UInt32, "credit": pl.Float64}
        return pl.DataFrame(schema=schema | {"min_credit": pl.Float64, "max_credit": pl.Float64})
    return (
        ends.group_by(block)
        .agg(
            pl.len().alias("episodes"),
            credit.mean().alias("credit"),
            credit.min().alias("min_credit"),
            credit.max().alias("max_credit"),
        )
        .rename({"block": "episode"})
        .sort("episode")
        .collect(engine="streaming")
    )


def episode_blocks(
    events: pl.LazyFrame, points: int, since: int = 0
) -> tuple[pl.LazyFrame, pl.Expr | None]:
    """The `episode_end` events from episode `since` on, and each event's block (`block`,
    the block's first episode; null outside the finished episodes' range) of at most
    `points` blocks of consecutive episode numbers (None when no episode finished)."""
    if points < 1:
        raise ValueError(f"points must be at least 1; got {points}")
    ends = events.filter((pl.col("kind") == "episode_end") & (pl.col("episode") >= since))
    lo, hi = (
        ends.select(pl.col("episode").min().alias("lo"), pl.col("episode").max().alias("hi"))
        .collect()
        .row(0)
    )
    if lo is None:
        return ends, None
    width = -(-(hi - lo + 1) // points)
    episode = pl.col("episode")
    block = pl.when(episode.is_between(lo, hi)).then(lo + (episode - lo) // width * width)
    return ends, block.alias("block")


def late_episode(events: pl.LazyFrame, share: float) -> int:
    """The first episode of the last `share` of finished episodes (0 if none finished).

    Counted in the query, not collected: finished episodes are numbered consecutively in
    every run the engines write, so the answer is an offset from the first; otherwise (a
    ledger edited by hand, say) their numbers are sorted to find it."""
    ends = events.filter(pl.col("kind") == "episode_end").select("episode")
    n, lo, hi = (
        ends.select(
            pl.len(), pl.col("episode").min().alias("lo"), pl.col("episode").max().alias("hi")
        )
        .collect()
        .row(0)
    )
    if not n:
        return 0
    k = int(n * (1 - share))
    if hi - lo + 1 == n and ends.select(pl.col("episode").n_unique()).collect().item() == n:
        return int(lo + k)
    return int(ends.sort("episode").collect(engine="streaming")["episode"][k])
