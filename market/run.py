"""One simulation run: its configuration, its opening and closing transactions, the loop.

A run opens with `RunStart` (seed and configuration) and one `Open` per account, and closes
with `RunEnd` and a `Balance` statement per account taken from the live balances the bus kept.
The run id is derived from the configuration, so the same seed gives the same ledger bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from pydantic import (
    Field,
    model_validator,
)

from ledger.events import (
    AUCTIONEER,
    ENVIRONMENT,
    TREASURY,
    Balance,
    Endow,
    Header,
    Open,
    RunEnd,
    RunStart,
)
from ledger.replay import Balances, LiveBalances, replay_frame
from ledger.store import Ledger
from market.bus import Bus
from market.core import Core, EpisodeResult, Start
from market.economy import Economy, EconomyConfig
from market.kernel import Kernel
from market.mechanisms import Mechanism
from market.recorded import Recorded
from market.rounds import RoundKernel
from market.society import Policy, Society
from market.tasks import Task, make_task


class RunConfig(Recorded):
    """Everything that determines a run's ledger."""

    added = ("reward_scale", "reward_offset")

    task: str = "chain"
    mechanism: Mechanism = Mechanism.CCV
    bidder: str = "truthful"
    cloned: bool = True
    episodes: int | None = Field(default=1000, ge=1)
    steps: int | None = Field(default=None, ge=1)
    """Env steps (auctions) after which no new episode starts; None: run `episodes`."""
    learner: dict[str, Any] | None = None
    """The learning bidder's own configuration, when the bidder learns (recorded, hashed)."""
    primitives: int | None = Field(default=None, ge=2)
    """Chain's number of primitives (2 useful, the rest useless); None: the task's own."""
    init: str | None = None
    """The snapshot the learners start from (a transfer), as `PATH sha256=HEX`; None: fresh."""
    economy: EconomyConfig | None = None
    """The Hayek economy's rules (endowments, budgets, rent, bankruptcy); None: no wealth."""
    frozen: bool = False
    """The learners bid from their parameters and never update (an evaluation)."""
    seed: int = Field(default=0, ge=0)
    gamma: float = Field(default=0.99, gt=0.0, le=1.0)
    constant: float = Field(default=0.5, ge=0.0, le=1.0)
    concurrency: int = Field(default=1, ge=1)
    reward_scale: float | None = Field(default=None, gt=0.0)
    """A Gymnasium task's credit per unit of its env's reward; None: the env's default
    (`market.gym_tasks.REWARD_SCALES`)."""
    reward_offset: float | None = None
    """Added to a Gymnasium task's every step's reward before scaling; None: the env's
    default (`market.gym_tasks.REWARD_OFFSETS`)."""

    @model_validator(mode="after")
    def _bounded(self) -> RunConfig:
        if self.episodes is None and self.steps is None:
            raise ValueError("give a number of episodes or of steps")
        return self

    @property
    def run_id(self) -> str:
        """A readable id that is a function of the configuration alone."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{file_name(self.task)}-{self.mechanism.value}-s{self.seed}-{digest}"


def file_name(task: str) -> str:
    """A task's name as part of a file name (`gym:ALE/Pong-v5` -> `gym-ALE-Pong-v5`)."""
    return task.replace(":", "-").replace("/", "-")


def task_of(config: RunConfig) -> Task:
    """The task `config` names, made for its seed, discount, primitives and reward map."""
    return make_task(config.task, config.seed, config.gamma, config.primitives,
                     config.reward_scale, config.reward_offset)  # fmt: skip


KernelChoice = Literal["auto", "episodes", "rounds"]
KERNELS: tuple[KernelChoice, ...] = ("auto", "episodes", "rounds")


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports."""

    events: int
    seconds: float
    episodes: int
    mean_return: int
    balances: Balances
    steps: int = 0
    """Env steps (auctions, or the plant's steps) the run took."""
    stopped: str | None = None
    """Why the run ended before its budget (an economy's extinction, say); None when it ran
    its budget out."""


def simulate(
    config: RunConfig,
    ledger: Ledger,
    policy: Policy,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    bus: Bus | None = None,
    kernel: KernelChoice = "auto",
    task: Task | None = None,
    economy: Economy | None = None,
) -> RunSummary:
    """Run `config` with `policy` into `ledger`: opened (`open_auction`, which says what each
    argument does), its budget run, closed and flushed."""
    run = open_auction(config, ledger, policy, on_episode, bus, kernel, task, economy)
    return run.run(config.episodes, config.concurrency, config.steps)


def open_auction(
    config: RunConfig,
    ledger: Ledger,
    policy: Policy,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    bus: Bus | None = None,
    kernel: KernelChoice = "auto",
    task: Task | None = None,
    economy: Economy | None = None,
) -> OpenRun:
    """Open a run of `config` with `policy` in `ledger`, its kernel ready to run episodes.

    Pass a `bus` over the same ledger to have subscribers (learners, monitors) see every
    committed transaction. `kernel` picks the episode kernel (one SimPy process per
    episode) or the round kernel (all concurrent episodes as arrays); both write
    the same ledger, so it is not part of the configuration. `auto` takes rounds when several
    episodes run at once. `policy` may be `DRIVEN`: the run's driver submits the bids. `task`,
    if given, is the run's task already made (`make_task(config.task, seed, gamma)`), so a
    task with a classifier or options to load is made once. A run with `config.economy` runs
    on the episode kernel and needs its `economy` (`Economy(config.economy, society)`), made
    before the policy, which bids for the economy's slots.
    """
    if task is None:
        task = task_of(config)
    society = Society.of(task, config.cloned)
    rounds = kernel == "rounds" or (kernel == "auto" and config.concurrency > 1)
    bus_ = bus if bus is not None else Bus(ledger)
    if config.economy is not None:
        if kernel == "rounds":
            raise ValueError("an economy runs on the episode kernel: drop --kernel rounds")
        rounds = False
        if economy is None:
            raise ValueError("an economy run needs its Economy, whose slots the policy bids for")

    def build(start: Start) -> Engine:
        if not rounds:
            return Kernel(start, task=task, society=society, mechanism=config.mechanism,
                          policy=policy, gamma=config.gamma, economy=economy)  # fmt: skip
        return RoundKernel(start, task=task, society=society, mechanism=config.mechanism,
                           policy=policy, gamma=config.gamma)  # fmt: skip

    return OpenRun(
        ledger,
        bus_,
        run_id=config.run_id,
        seed=config.seed,
        config_json=config.model_dump_json(),
        accounts=(ENVIRONMENT, AUCTIONEER, *((TREASURY,) if economy else ()), *society.accounts),
        endowments=economy.endowments() if economy is not None and not ledger.next_seq else (),
        live=economy.live if economy is not None else None,
        build=build,
        on_episode=on_episode,
    )


Engine = Core
"""A kernel that runs episodes into a bus: the auction kernels, the control kernel."""


class OpenRun:
    """A run opened in a ledger. Opening writes RunStart, one Open per new account and an
    Endow from the environment per `endowments`, then builds the engine (`build`) at the
    ledger's continuation point. `run` plays a budget of episodes and closes; a driver
    steps the run instead (`begin`, then the engine's `advance` and `submit`). `close`
    writes RunEnd and a Balance per account from the live balances, and flushes."""

    def __init__(
        self,
        ledger: Ledger,
        bus: Bus,
        *,
        run_id: str,
        seed: int,
        config_json: str,
        accounts: tuple[str, ...],
        build: Callable[[Start], Engine],
        endowments: Sequence[tuple[str, int]] = (),
        live: LiveBalances | None = None,
        on_episode: Callable[[EpisodeResult], None] | None = None,
    ) -> None:
        if bus.ledger is not ledger:
            raise ValueError("the bus must publish into the run's ledger")
        self.ledger, self.bus, self.run_id, self.accounts = ledger, bus, run_id, accounts
        self.live = live if live is not None else LiveBalances()  # an economy reads the fold
        self._on_episode = on_episode
        self._ended = 0
        self._return = 0  # running totals: nothing grows with the run
        resume = Continuation.of(ledger)
        self.live.balances.update(resume.balances)
        bus.subscribe_all(self.live.apply, self.live.apply_batch)
        self._start, self._first_seq = time.perf_counter(), ledger.next_seq
        new = [a for a in accounts if a not in ledger.accounts]
        head = Header(tx=self._first_seq, run=run_id, episode=-1, step=-1, time=resume.time)
        first = self._first_seq
        bus.publish(
            [
                RunStart(seq=first, **head, seed=seed, config=config_json),
                *(Open(seq=first + 1 + i, **head, account=a) for i, a in enumerate(new)),
                *(
                    Endow(seq=first + 1 + len(new) + i, **head, src=ENVIRONMENT, dst=a, amount=n)
                    for i, (a, n) in enumerate(endowments)
                ),
            ]
        )
        self.engine = build(Start(bus, run_id, ledger.next_seq, resume.next_episode, resume.time))

    def _record(self, result: EpisodeResult) -> None:
        self._ended += 1
        self._return += result.episode_return
        if self._on_episode is not None:
            self._on_episode(result)

    def begin(self, episodes: int | None, concurrency: int = 1, steps: int | None = None) -> None:
        """Schedule `episodes` more episodes (or `steps` more env steps), for the driver to
        step through with the engine's `advance` and `submit`."""
        self.engine.begin(episodes, concurrency, self._record, steps)

    def run(self, episodes: int | None, concurrency: int, steps: int | None) -> RunSummary:
        """Run `episodes` episodes (or `steps` env steps), `concurrency` at a time, then close."""
        self.begin(episodes, concurrency, steps)
        if self.engine.advance():
            raise RuntimeError("a driven run is stepped by its driver: advance and submit")
        return self.close()

    def close(self) -> RunSummary:
        """Write the run's closing (RunEnd, the balances) and flush the ledger."""
        engine, ledger, live = self.engine, self.ledger, self.live
        seq = engine.seq
        head = Header(tx=seq, run=self.run_id, episode=-1, step=-1, time=engine.env.now)
        self.bus.publish(
            [
                RunEnd(seq=seq, **head, episodes=self._ended),
                *(
                    Balance(seq=seq + 1 + i, **head, account=a, amount=live.balances.get(a, 0))
                    for i, a in enumerate(sorted(ledger.accounts))
                ),
            ]
        )
        ledger.flush()
        return RunSummary(
            events=ledger.next_seq - self._first_seq,
            seconds=time.perf_counter() - self._start,
            episodes=self._ended,
            mean_return=self._return // max(self._ended, 1),
            balances={a: live.balances.get(a, 0) for a in self.accounts},
            steps=engine.steps,
            stopped=engine.stopped,
        )


@dataclass(frozen=True)
class Continuation:
    """Where a run appended to a non-empty ledger picks up: balances, episode number, time."""

    balances: Balances
    next_episode: int
    time: float

    @classmethod
    def of(cls, ledger: Ledger) -> Continuation:
        """Read from the ledger's tail: the next episode follows the last one started, time
        goes on from the last event, and balances are the last run's closing statements
        (replayed from the whole ledger, one chunk at a time, only when the last run was
        not closed)."""
        if ledger.next_seq == 0:
            return cls({}, 0, 0.0)
        columns = ["seq", "tx", "kind", "episode", "time", "account", "amount"]
        episode, time_, closing = -1, 0.0, None
        for frame in ledger.backwards(columns):
            if frame.is_empty():
                continue
            if closing is None:
                last = frame.filter(pl.col("tx") == frame["tx"][-1])
                closing = last if last["kind"][0] == "run_end" else last.clear()
            most, latest = frame.select(pl.col("episode").max(), pl.col("time").max()).row(0)
            episode = max(episode, -1 if most is None else int(most))
            time_ = max(time_, 0.0 if latest is None else float(latest))
            if (frame["kind"] == "episode_start").any():
                break
        if closing is not None and closing.height:
            statements = closing.filter(pl.col("kind") == "balance")
            balances = dict(statements.select("account", "amount").iter_rows())
        else:
            balances = {}
            for chunk in ledger.chunks(_REPLAY_EVENTS):
                for account, delta in replay_frame(chunk.lazy()).items():
                    balances[account] = balances.get(account, 0) + delta
        return cls(balances, episode + 1, time_)


_REPLAY_EVENTS = 1 << 22
"""Events replayed at once when a ledger's last run was not closed."""
