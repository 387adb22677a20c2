"""The population of an economy, folded from the ledger: who opened and closed, when, and why.

A member is any account but the market's own (`environment`, `auctioneer`, `treasury`,
`system`). An `open` is a founding when its account is endowed by the environment, or has no
endowment (a society without an economy), and a birth when a member endows it; a `close`
is a death, with its recorded reason.
"""

from __future__ import annotations

import polars as pl

from analyses.inequality import NOT_AGENTS, gini, top_share
from analyses.wealth import wealth_over_time
from ledger.events import ENVIRONMENT


def lifecycle(events: pl.LazyFrame) -> pl.DataFrame:
    """One row per open or close of a member, in sequence order: seq, tx, time, account,
    change (+1 open, -1 close), event ("founded", "born" or "died"), parent (who endowed a
    child) and reason (why a member died)."""
    members = ~pl.col("account").is_in(list(NOT_AGENTS))
    changes = events.filter(pl.col("kind").is_in(["open", "close"]) & members).select(
        "seq", "tx", "time", "kind", "account", "reason"
    )
    endowed = events.filter(pl.col("kind") == "endow").select(
        "tx", pl.col("dst").alias("account"), pl.col("src").alias("endower")
    )
    born = (pl.col("kind") == "open") & pl.col("endower").is_not_null()
    born = born & (pl.col("endower") != ENVIRONMENT)
    return (
        changes.join(endowed, on=["tx", "account"], how="left")
        .select(
            "seq",
            "tx",
            "time",
            "account",
            pl.when(pl.col("kind") == "open").then(1).otherwise(-1).alias("change"),
            pl.when(pl.col("kind") == "close")
            .then(pl.lit("died"))
            .when(born)
            .then(pl.lit("born"))
            .otherwise(pl.lit("founded"))
            .alias("event"),
            pl.when(born).then(pl.col("endower")).alias("parent"),
            pl.when(pl.col("kind") == "close").then(pl.col("reason")).alias("reason"),
        )
        .sort("seq")
        .collect()
    )


def population(events: pl.LazyFrame) -> pl.DataFrame:
    """The living members after each transaction that opens or closes members (the founders,
    opened together, are one row): seq (its last open or close), time, alive, and the births
    and deaths so far."""
    return (
        lifecycle(events)
        .select(
            "seq",
            "tx",
            "time",
            pl.col("change").cum_sum().alias("alive"),
            (pl.col("event") == "born").cum_sum().alias("births"),
            (pl.col("event") == "died").cum_sum().alias("deaths"),
        )
        .group_by("tx", maintain_order=True)
        .last()
        .select("seq", "time", "alive", "births", "deaths")
    )


def living_inequality(events: pl.LazyFrame, points: int = 100) -> pl.DataFrame:
    """The wealth of the living members at `points` checkpoints (as `wealth_over_time`):
    seq, time, alive, total credit, Gini, and the richest member's share. The dead and the
    unborn are left out (`inequality.gini_over_time` gives the Gini with the dead at 0)."""
    return living_over_time(wealth_over_time(events, points)).drop("env_steps")


def living_over_time(wealth_table: pl.DataFrame) -> pl.DataFrame:
    """`living_inequality` from a `wealth_over_time` table, with each checkpoint's env steps:
    seq, time, env_steps, alive, total_credit, gini, top1_share."""
    members = ~pl.col("account").is_in(list(NOT_AGENTS))
    living = wealth_table.filter(members & ~pl.col("closed"))
    rows = []
    for (seq,), part in living.group_by("seq", maintain_order=True):
        credit = part["credit"].to_numpy()
        rows.append(
            {
                "seq": seq,
                "time": part["time"][0],
                "env_steps": part["env_steps"][0],
                "alive": part.height,
                "total_credit": float(credit.sum()),
                "gini": gini(credit),
                "top1_share": top_share(credit, 1),
            }
        )
    schema = {"seq": pl.Int64, "time": pl.Float64, "env_steps": pl.Int64, "alive": pl.Int64,
              "total_credit": pl.Float64, "gini": pl.Float64, "top1_share": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).sort("seq")
