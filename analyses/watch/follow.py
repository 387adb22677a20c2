"""Follow a run's ledger as it grows: fold only the segments committed since the last look.

A `RunFollower` re-reads the ledger's manifest (`chain.jsonl`, one line per committed
segment) and folds each segment it has not seen yet, once, with the analyses' own functions
(`analyses.flows`, `analyses.population`, `analyses.auctions`, `analyses.wealth`,
`analyses.control`, `analyses.inequality`), into small carried state: balances per account,
counts per state and primitive, the episodes still running, and series of at most
`POINTS` points (thinned by halves when full). Memory therefore stays flat in the ledger's
length. Each new segment is hashed and checked against its chain link, and audited by the
streaming audit's own chunk check (`market.audit`), carrying its state from segment to
segment, so the page shows the audit's status as the run goes.

Nothing is ever written into the run: segments are read whole from their files, the
manifest by `DiskLedger.open_existing` (which reads it and creates nothing in an existing
ledger), `metrics.parquet`, `config.json` and `summary.json` as they stand.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analyses.auctions import bids, bids_against, prices, winners
from analyses.control import agent_returns, trajectory
from analyses.flows import CLOSE, STEP_KINDS, flows, postings
from analyses.inequality import ALL_OPENED, LIVING, NOT_AGENTS, gini, inequality_of, lorenz_of
from analyses.population import lifecycle
from analyses.report import primitive_names_of, q_star_of, states_recur
from analyses.wealth import returns, wealth_over_time
from ledger import chain, merkle
from ledger.disk import DiskLedger, Link, check_link, read_segment
from ledger.errors import CorruptLedger
from ledger.units import UNIT
from market.audit import AuditStream
from simulation import rundir
from simulation.sweep import RUNS, SWEEP

POINTS = 400
"""The most points a series keeps; past it, every other old point is dropped."""
WINDOW = 4
"""The flows shown are those of the last `WINDOW` segments folded."""
SUB = 16
"""Checkpoints of the wealth and Gini series per segment folded."""
PER_POLL = 16
"""The most segments one poll folds, so the page updates while a long run is caught up."""
EVERY_STATE = "all"
"""The price series of a run whose states do not recur (`states_recur`): every state's."""


class NotARun(ValueError):
    """The path is neither a run directory nor a sweep directory."""


class Series:
    """Points (dicts) in order, at most `limit`: when full, every other older point goes."""

    def __init__(self, limit: int = POINTS) -> None:
        self.limit = limit
        self.points: list[dict[str, Any]] = []

    def add(self, point: dict[str, Any]) -> None:
        self.points.append(point)
        if len(self.points) > self.limit:
            last = self.points[-1]
            self.points = [*self.points[:-1:2], last]

    def column(self, name: str) -> list[Any]:
        return [p.get(name) for p in self.points]


@dataclass
class LiveAudit:
    """The streaming audit, fed one committed segment at a time (a segment holds whole
    transactions), its state carried between them (`market.audit.AuditStream`)."""

    stream: AuditStream = field(default_factory=AuditStream)
    prev_link: str = chain.GENESIS
    segments: int = 0
    broken: str | None = None
    """The first violation found (chain or rule), in words; None while clean."""

    def chained(self, link: Link, data: bytes) -> bool:
        """Whether the segment's bytes hash to its link, which follows the last one (the
        `chain` rule); a break is the audit's violation, and nothing after it is read."""
        if self.broken is not None:
            return False
        try:
            check_link(link, self.prev_link, data)
        except CorruptLedger as e:
            self.broken = f"seq {e.seq}: chain: {e}"
            return False
        self.prev_link = link.link
        return True

    def feed(self, frame: pl.DataFrame) -> None:
        """Check every rule on a segment's events, given the state carried from before."""
        if self.broken is not None:
            return
        violation = self.stream.feed(frame)
        self.segments += 1
        if violation is not None:
            self.broken = str(violation)

    def status(self) -> dict[str, Any]:
        return {
            "ok": self.broken is None,
            "events": self.stream.report.events,
            "segments": self.segments,
            "violation": self.broken,
        }


class RunFollower:
    """The folded state of one run's ledger, brought up to date by `poll`."""

    def __init__(self, run: Path) -> None:
        self.run = run
        if not (run / rundir.LEDGER / "chain.jsonl").is_file():
            raise NotARun(f"{run}: not a run directory (no ledger/chain.jsonl) nor a sweep")
        self.path = run / rundir.LEDGER
        self.config = _json(run / rundir.CONFIG)
        self.q_star = q_star_of(self.config)
        self.names = primitive_names_of(self.config)
        self.per_state = states_recur(self.config)
        """Prices, wins and bids per state; else over every state at once (state None, its
        prices under `EVERY_STATE`), so what is held grows with the society, not the ledger."""
        self.tree = merkle.Tree()
        self.audit = LiveAudit()
        self.folded = 0
        """Segments folded so far (links of the manifest, in order)."""
        self.committed = 0
        self.events = 0
        self.env_steps = 0
        self.last_seq = -1
        self.balances: dict[str, int] = {}
        self.closed: set[str] = set()
        self.window: deque[pl.DataFrame] = deque(maxlen=WINDOW)
        self.wealth = Series()
        self.gini = Series()
        self.population = Series()
        self.alive = self.births = self.deaths = 0
        self.returns = Series()
        self.episode_returns = Series()
        self.episodes = 0
        self.prices = Series()
        self.wins: dict[tuple[int | None, int], int] = {}
        self.bid_sums: dict[tuple[int | None, int], tuple[float, int]] = {}
        self.open_rewards: dict[tuple[int, str], int] = {}
        self.agent_returns = Series()
        self.followed: int | None = None
        """The control episode whose steps are being gathered (one at a time)."""
        self.steps: list[pl.DataFrame] = []
        self.trajectory: dict[str, Any] = {}
        """The last control episode followed to its end: its steps, states and control."""
        self.rates: deque[tuple[float, int]] = deque(maxlen=10)
        self.torn: list[str] = []

    def poll(self, limit: int = PER_POLL) -> bool:
        """Fold the segments committed since the last poll (at most `limit`); True if any."""
        if not self.path.is_dir():
            raise NotARun(f"{self.run}: deleted while watched; this is its last state")
        ledger = DiskLedger.open_existing(self.path)
        links, self.torn = ledger.links, list(ledger.torn_tail)
        self.committed = links[-1].last_seq + 1 if links else 0
        new = links[self.folded : self.folded + limit]
        for link in new:
            data = (self.path / link.segment).read_bytes()
            if not self.audit.chained(link, data):
                break  # the page shows the break in red; nothing untrusted is drawn
            frame = read_segment(data)
            self.tree.append(link.digest, link.first_seq, link.last_seq)
            self.audit.feed(frame)
            self._fold(frame)
            self.folded += 1
            self.last_seq = link.last_seq
        self.rates.append((time.monotonic(), self.events))
        return bool(new)

    @property
    def caught_up(self) -> bool:
        """Whether every committed segment is folded (or a chain break stopped the reading)."""
        return self.audit.broken is not None or self.events >= self.committed

    def _fold(self, df: pl.DataFrame) -> None:
        events = df.lazy()
        self._fold_wealth(events)  # from the balances and steps before the segment
        self.events += df.height
        kind = df["kind"]
        self.env_steps += int(kind.is_in(list(STEP_KINDS)).sum())
        moved = flows(events)
        for account, units in (
            postings(moved).group_by("account").agg(pl.col("amount").sum()).iter_rows()
        ):
            self.balances[account] = self.balances.get(account, 0) + int(units)
        self.closed |= set(df.filter(pl.col("kind") == CLOSE)["account"].to_list())
        self.window.append(
            moved.groups.filter(pl.col("src").is_not_null()).select("src", "dst", "amount")
        )
        self._fold_population(events)
        self._fold_returns(events)
        if (kind == "allocate").any():
            self._fold_auctions(events)
        if self.config.get("variant") == "control":
            self._fold_agents(events, df)
            self._fold_trajectory(events, df)

    def _fold_wealth(self, events: pl.LazyFrame) -> None:
        """Points of the wealth and Gini series at `SUB` checkpoints of a segment:
        `wealth_over_time` of the segment (its moves so far at each) on the carried balances."""
        table = wealth_over_time(events, SUB)
        for (seq,), part in sorted(table.partition_by("seq", as_dict=True).items()):
            now = dict(self.balances)
            shut = set(self.closed)
            for account, units, closed in part.select("account", "units", "closed").iter_rows():
                now[account] = now.get(account, 0) + int(units)
                if closed:
                    shut.add(account)
            steps = self.env_steps + int(part["env_steps"][0])
            self.wealth.add({"seq": seq, "env_steps": steps,
                             **{a: u / UNIT for a, u in sorted(now.items())}})  # fmt: skip
            agents = {a: u / UNIT for a, u in now.items() if a not in NOT_AGENTS}
            living = [c for a, c in agents.items() if a not in shut]
            self.gini.add(
                {"env_steps": steps, "all": gini(list(agents.values())), "living": gini(living)}
            )

    def _fold_population(self, events: pl.LazyFrame) -> None:
        changes = lifecycle(events)
        if changes.is_empty():
            return
        self.alive += int(changes["change"].sum())
        self.births += int((changes["event"] == "born").sum())
        self.deaths += int((changes["event"] == "died").sum())
        self.population.add(
            {"seq": int(changes["seq"][-1]), "env_steps": self.env_steps, "alive": self.alive,
             "births": self.births, "deaths": self.deaths}
        )  # fmt: skip

    def _fold_returns(self, events: pl.LazyFrame) -> None:
        ended = returns(events)
        if ended.is_empty():
            return
        self.episodes += ended.height
        credit = ended["credit"]
        self.returns.add(
            {"env_steps": self.env_steps, "episodes": self.episodes,
             "mean": _num(credit.mean()), "min": _num(credit.min()), "max": _num(credit.max())}
        )  # fmt: skip
        step = max(1, ended.height // 50)  # at most 50 episodes of a segment kept
        for episode, value in ended.select("episode", "credit").gather_every(step).iter_rows():
            self.episode_returns.add({"episode": int(episode), "credit": _num(value)})

    def _fold_auctions(self, events: pl.LazyFrame) -> None:
        per_state = self.per_state
        block = prices(events, episodes_per_point=1 << 62, per_state=per_state)
        self.prices.add(
            {"env_steps": self.env_steps,
             **{EVERY_STATE if s is None else str(s): _num(p)
                for s, p in block.select("state", "mean_price").iter_rows()}}
        )  # fmt: skip
        for state, primitive, wins in (
            winners(events, per_state=per_state).select("state", "primitive", "wins").iter_rows()
        ):
            key = (state, int(primitive))
            self.wins[key] = self.wins.get(key, 0) + int(wins)
        for state, primitive, mean, n in bids(events, per_state=per_state).iter_rows():
            key = (state, int(primitive))
            total, count = self.bid_sums.get(key, (0.0, 0))
            self.bid_sums[key] = (total + float(mean) * int(n), count + int(n))

    def _fold_trajectory(self, events: pl.LazyFrame, df: pl.DataFrame) -> None:
        """Gather one episode's steps at a time (the newest started in a segment, when none is
        being followed) and keep the last one gathered to its end: memory is one episode."""
        if self.followed is None:
            started = df.filter(pl.col("kind") == "episode_start")["episode"]
            if started.is_empty():
                return
            self.followed, self.steps = int(started.max()), []  # type: ignore[arg-type]
        self.steps.append(trajectory(events, self.followed))
        ended = df.filter((pl.col("kind") == "episode_end") & (pl.col("episode") == self.followed))
        if ended.is_empty():
            return
        steps = pl.concat(self.steps)
        x = steps["x"].to_list()
        dims = len(x[0]) if x else 0
        self.trajectory = {
            "episode": self.followed,
            "step": steps["step"].to_list(),
            "x": [[float(row[d]) for row in x] for d in range(dims)],
            "control": steps["control"].to_list(),
        }
        self.followed, self.steps = None, []

    def _fold_agents(self, events: pl.LazyFrame, df: pl.DataFrame) -> None:
        for episode, agent, units, _credit in agent_returns(events).iter_rows():
            key = (int(episode), str(agent))
            self.open_rewards[key] = self.open_rewards.get(key, 0) + int(units)
        ended = set(df.filter(pl.col("kind") == "episode_end")["episode"].to_list())
        if not ended:
            return
        done: dict[str, list[int]] = {}
        for key in [k for k in self.open_rewards if k[0] in ended]:
            done.setdefault(key[1], []).append(self.open_rewards.pop(key))
        self.agent_returns.add(
            {"episodes": self.episodes,
             **{a: float(np.mean(v)) / UNIT for a, v in sorted(done.items())}}
        )  # fmt: skip

    def held(self) -> pl.DataFrame:
        """The agents' wealth now, as `inequality.agent_wealth` gives it (poorest first)."""
        rows = [(a, u) for a, u in self.balances.items() if a not in NOT_AGENTS]
        frame = pl.DataFrame(
            {"account": [a for a, _ in rows], "units": [u for _, u in rows]},
            schema={"account": pl.String, "units": pl.Int128},
        )
        return frame.with_columns(
            (pl.col("units").cast(pl.Float64) / UNIT).alias("credit"),
            pl.col("account").is_in(sorted(self.closed)).alias("closed"),
        ).sort("units", "account")

    def events_per_second(self) -> float:
        if len(self.rates) < 2:
            return 0.0
        (t0, e0), (t1, e1) = self.rates[0], self.rates[-1]
        return (e1 - e0) / (t1 - t0) if t1 > t0 else 0.0

    def state(self) -> dict[str, Any]:
        """Everything the page draws, as JSON-ready data."""
        held = self.held()
        table = inequality_of(held)
        measures = {row["members"]: row for row in table.iter_rows(named=True)}
        summary = _json(self.run / rundir.SUMMARY)
        state: dict[str, Any] = _clean(
            {
                "kind": "run",
                "name": self.run.name,
                "variant": self.config.get("variant", "auction"),
                "config": {k: v for k, v in self.config.items() if not isinstance(v, dict)},
                "head": self.tree.head().root if self.tree.size else None,
                "events": self.events,
                "committed": self.committed,
                "segments": self.folded,
                "caught_up": self.caught_up,
                "events_per_s": self.events_per_second(),
                "env_steps": self.env_steps,
                "episodes": self.episodes,
                "finished": summary.get("audit") is not None and summary.get("stopped") is None
                and summary.get("episodes") is not None,
                "torn": self.torn,
                "audit": self.audit.status(),
                "wealth": self._wealth_series(),
                "final_wealth": [
                    {"account": a, "credit": u / UNIT, "closed": a in self.closed}
                    for a, u in sorted(self.balances.items())
                ],
                "gini": {"all": measures[ALL_OPENED]["gini"], "living": measures[LIVING]["gini"],
                         "agents": measures[ALL_OPENED]["agents"],
                         "alive": measures[LIVING]["agents"]},
                "lorenz": {name: _lorenz(held, living) for name, living
                           in (("all", False), ("living", True))},
                "gini_series": {k: self.gini.column(k) for k in ("env_steps", "all", "living")},
                "flows": self._flows(),
                "population": {k: self.population.column(k)
                               for k in ("env_steps", "alive", "births", "deaths")},
                "returns": {k: self.returns.column(k)
                            for k in ("env_steps", "episodes", "mean", "min", "max")},
                "episode_returns": {k: self.episode_returns.column(k)
                                    for k in ("episode", "credit")},
                "prices": self._prices(),
                "winners": self._winners(),
                "bids": self._bids(),
                "agent_returns": self._agent_returns(),
                "trajectory": self.trajectory,
                "metrics": self._metrics(),
            }
        )  # fmt: skip
        return state

    def _wealth_series(self) -> dict[str, Any]:
        x = self.wealth.column("env_steps")
        accounts = sorted({k for p in self.wealth.points for k in p} - {"seq", "env_steps"})
        return {
            "env_steps": x,
            "members": {a: self.wealth.column(a) for a in accounts if a not in NOT_AGENTS},
            "market": {a: self.wealth.column(a) for a in accounts if a in NOT_AGENTS},
        }

    def _flows(self) -> dict[str, Any]:
        if not self.window:
            return {"accounts": [], "credit": [], "segments": 0}
        moved = (
            pl.concat(list(self.window))
            .group_by("src", "dst")
            .agg(pl.col("amount").sum())
            .filter(pl.col("amount") != 0)
        )
        accounts = sorted(set(moved["src"].to_list()) | set(moved["dst"].to_list()))
        at = {a: i for i, a in enumerate(accounts)}
        grid = [[0.0] * len(accounts) for _ in accounts]
        for src, dst, amount in moved.iter_rows():
            grid[at[src]][at[dst]] += int(amount) / UNIT
        return {"accounts": accounts, "credit": grid, "segments": len(self.window)}

    def _prices(self) -> dict[str, Any]:
        keys = {k for p in self.prices.points for k in p} - {"env_steps"}
        states = sorted(keys, key=int) if self.per_state else sorted(keys)
        return {"env_steps": self.prices.column("env_steps"),
                "states": {s: self.prices.column(s) for s in states}}  # fmt: skip

    def _name(self, primitive: int) -> str:
        names = self.names
        return names[primitive] if names is not None and primitive < len(names) else str(primitive)

    def _winners(self) -> list[dict[str, Any]]:
        per_state: dict[int | None, int] = {}
        for (state, _), n in self.wins.items():
            per_state[state] = per_state.get(state, 0) + n
        return [
            {"state": s, "primitive": p, "name": self._name(p), "wins": n,
             "share": n / per_state[s]}
            for (s, p), n in sorted(self.wins.items())
        ]  # fmt: skip

    def _bids(self) -> list[dict[str, Any]]:
        if not self.bid_sums:
            return []
        table = pl.DataFrame(
            [{"state": s, "primitive": p, "mean_bid": t / max(n, 1), "bids": n}
             for (s, p), (t, n) in sorted(self.bid_sums.items())],
            schema={"state": pl.Int64, "primitive": pl.Int64, "mean_bid": pl.Float64,
                    "bids": pl.Int64},
        )  # fmt: skip
        q = self.q_star
        if (
            q is not None
            and table["state"].max() < q.shape[0]
            and table["primitive"].max() < (q.shape[1])
        ):
            table = bids_against(table, q)
        return [{**row, "name": self._name(row["primitive"])} for row in table.to_dicts()]

    def _agent_returns(self) -> dict[str, Any]:
        agents = sorted({k for p in self.agent_returns.points for k in p} - {"episodes"})
        return {"episodes": self.agent_returns.column("episodes"),
                "agents": {a: self.agent_returns.column(a) for a in agents}}  # fmt: skip

    def _metrics(self) -> dict[str, list[Any]]:
        path = self.run / "metrics.parquet"
        if not path.is_file():
            return {}
        try:
            frame = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError):
            return {}  # being rewritten: the next poll reads it
        if frame.height > POINTS:
            frame = frame.gather_every(-(-frame.height // POINTS))
        return {c: frame[c].to_list() for c in frame.columns if frame[c].dtype.is_numeric()}


def _lorenz(held: pl.DataFrame, living: bool) -> dict[str, list[Any]]:
    curve = lorenz_of(held, living)
    return {"population_share": curve["population_share"].to_list(),
            "wealth_share": curve["wealth_share"].to_list()}  # fmt: skip


class SweepFollower:
    """Every cell of a sweep, each a `RunFollower` (a cell not started yet is listed empty)."""

    def __init__(self, sweep: Path) -> None:
        if not (sweep / SWEEP).is_file():
            raise NotARun(f"{sweep}: not a sweep directory (no {SWEEP})")
        self.sweep = sweep
        self.cells: dict[str, RunFollower] = {}

    def _discover(self) -> Iterator[tuple[str, Path]]:
        root = self.sweep / RUNS
        if root.is_dir():
            for manifest in sorted(root.rglob("chain.jsonl")):
                run = manifest.parent.parent
                yield str(run.relative_to(root)), run

    def poll(self, limit: int = PER_POLL) -> bool:
        changed = False
        for name, run in self._discover():
            if name not in self.cells:
                self.cells[name] = RunFollower(run)
            changed |= self.cells[name].poll(limit)
        return changed

    def state(self) -> dict[str, Any]:
        cells = []
        for name, cell in self.cells.items():
            mean = cell.returns.column("mean")
            cells.append(
                {"name": name, "events": cell.events, "committed": cell.committed,
                 "episodes": cell.episodes, "env_steps": cell.env_steps,
                 "last_return": mean[-1] if mean else None, "audit": cell.audit.status(),
                 "returns": {k: cell.returns.column(k) for k in ("env_steps", "mean")},
                 "events_per_s": cell.events_per_second()}
            )  # fmt: skip
        state: dict[str, Any] = _clean(
            {
                "kind": "sweep",
                "name": self.sweep.name,
                "cells": cells,
                "events": sum(c.events for c in self.cells.values()),
                "events_per_s": sum(c.events_per_second() for c in self.cells.values()),
            }
        )
        return state


def follower(path: Path) -> RunFollower | SweepFollower:
    """A follower of the run or sweep at `path`; a one-line NotARun otherwise."""
    if not path.is_dir():
        raise NotARun(f"{path}: no such run or sweep directory")
    if (path / SWEEP).is_file():
        return SweepFollower(path)
    return RunFollower(path)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _clean(value: Any) -> Any:
    """`value` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value
