"""Run one `Simulation` into a run directory: what `market simulate` and sweeps both do.

`prepare` builds everything (the engine's config, the run directory with `config.json` and
`simulation.toml`, the ledger, the bus, the bidders or agents and their learners); `execute`
runs it, saves the learners' record, audits the ledger and writes `summary.json`. Nothing is
printed: the caller shows progress through `on_episode` and reports the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.fixed import check_bidder, make_bidder
from agents.learner import Learner
from ledger.disk import DiskLedger
from market.audit import AuditReport
from market.audit import audit as audit_ledger
from market.bus import Bus
from market.core import EpisodeResult
from market.economy import Economy
from market.mechanisms import parse as parse_mechanism
from market.run import (
    KERNELS,
    KernelChoice,
    RunConfig,
    RunSummary,
    file_name,
    simulate,
    task_of,
)
from market.society import Policy, Society
from market.tasks import TABULAR_TASKS, Task, check_task
from simulation import rundir
from simulation.config import Simulation

if TYPE_CHECKING:
    from agents.control_learning import ControlSociety
    from agents.learning import LearningSociety
    from agents.ppo_monolithic import MonolithicPPO
    from agents.tensorboard import Scalars
    from agents.training import TrainingRecord
    from market.control import ControlPolicy, ControlRunConfig

OnEpisode = Callable[[EpisodeResult], None]
OPTION_TASKS = frozenset({"tworooms", "tworooms-blue"})
"""The tasks whose primitives are options the project trains (agents/option_ppo.py)."""


@dataclass
class Finished:
    """A run that has been executed, audited (unless asked not to) and summarised."""

    run: Path
    ledger: DiskLedger
    summary: RunSummary
    report: AuditReport | None
    """The closing audit's verdict; None when the run was not audited (`audit=False`)."""

    @property
    def audited(self) -> AuditReport:
        """The closing audit's verdict, for callers that always audit."""
        if self.report is None:
            raise ValueError(f"{self.run} was not audited: run `market audit {self.run}`")
        return self.report


NOT_AUDITED = "not audited (--no-audit): run `market audit RUN`"
"""What summary.json says of a run executed without its closing audit."""
INTERRUPTED = "interrupted (Ctrl-C) before its budget"
"""What summary.json says of a run stopped by the user (its figures then unknown)."""
STORAGE_FAILED = "stopped by a storage error before its budget"
"""What summary.json says of a run a failed write or sync stopped (its figures unknown)."""
PENDING = "pending: the run closed, its closing audit did not finish; run `market audit RUN`"
"""What summary.json says while the closing audit runs (and after, if it is killed)."""


@dataclass
class Prepared:
    """A run ready to execute: its directory and ledger exist, its learners are attached."""

    run: Path
    ledger: DiskLedger
    steps: int | None
    """The env-step budget, or None for an episode budget."""
    episodes: int | None
    learner: Learner | None
    _go: Callable[[OnEpisode | None], RunSummary]
    _after: Callable[[], None]
    resumed_at: int | None = None
    """With --resume: the first sequence number this run appends (the events before it are
    the run continued)."""
    phase: str = "prepared"
    """prepared, running, auditing or finished: how far `execute` got."""
    resumable: bool = True
    """Whether `--resume` can continue this run once it has committed events."""
    scalars: Scalars | None = None
    """With `--tensorboard DIR`: the run's TensorBoard writer."""

    def execute(
        self,
        on_episode: OnEpisode | None = None,
        audit: bool = True,
        on_audited: Callable[[int], None] | None = None,
    ) -> Finished:
        """Run, save the learners' record, write summary.json (with the ledger's head), then
        audit the ledger, streaming, and record the verdict in summary.json.

        The ledger is committed and the head recorded before the audit starts, so a run
        killed during its audit loses nothing and `market audit RUN` checks it again.
        `on_audited` sees the events audited so far after each chunk."""
        self.phase = "running"
        if self.scalars is not None:
            on_episode = self.scalars.watching(on_episode)
        try:
            with self._arithmetic():
                summary = self._go(on_episode)
        finally:
            if self.scalars is not None:
                self.scalars.close()
        self._after()
        self._write(summary, NOT_AUDITED if not audit else PENDING)
        self.phase = "auditing"
        if not audit:
            self.phase = "finished"
            return Finished(self.run, self.ledger, summary, None)
        report = audit_ledger(self.ledger, self.ledger.head, progress=on_audited)
        self._write(summary, "clean" if report.ok else str(report.violation))
        self.phase = "finished"
        return Finished(self.run, self.ledger, summary, report)

    def _arithmetic(self) -> contextlib.AbstractContextManager[None]:
        """Where the run loop runs: subnormals flushed when it learns (docs/learning.md)."""
        if self.learner is None:
            return contextlib.nullcontext()
        from agents.learning import flushing_subnormals

        return flushing_subnormals()

    def interrupted(self) -> str:
        """What an `execute` interrupted by Ctrl-C kept, in one line."""
        return self.stopped_by("interrupted", INTERRUPTED)

    def stopped_by(self, why: str, stopped: str) -> str:
        """What an `execute` stopped by `why` (Ctrl-C, a storage error) kept, in one line;
        summary.json records the committed head, with `stopped` saying why. A new run that
        committed nothing is removed, so no folder is left that is neither a run nor empty.

        What was committed is read again from disk, once the commit in flight on the
        ledger's writer thread has landed (or failed): Ctrl-C can land inside a commit,
        after the manifest line is written and before the in-memory ledger counts it."""
        run = self.run
        if self.phase == "running" and self.ledger.path.is_dir():
            with contextlib.suppress(Exception):  # a failed commit: what landed is read below
                self.ledger.wait()
            self.ledger = DiskLedger(self.ledger.path)
        committed = self.ledger.committed
        if self.phase == "auditing":
            return (
                f"{why} during the closing audit: the run is closed ({committed:,} "
                f"events committed); check it with `market audit {run}`"
            )
        if self.phase == "finished":
            return f"{why} after the run finished: {run} is complete"
        if self.resumed_at is None and committed == 0:
            shutil.rmtree(run, ignore_errors=True)
            return f"{why} before any event was committed: {run} removed"
        with contextlib.suppress(OSError):  # a full disk: the audit then says UNANCHORED
            self._write(None, NOT_AUDITED, stopped)  # what was committed, anchored by its head
        from agents.training import latest_snapshot

        kept = f"{why}: {committed:,} events committed"
        if self.resumed_at is not None:
            kept += f" ({committed - self.resumed_at:,} by this run)"
        if not self.resumable or (self.learner is not None and latest_snapshot(run) is None):
            return (
                f"{kept}; the run is not closed and cannot be resumed (no learner snapshot "
                f"yet, or a kind of run that cannot resume); `market audit {run}` checks it"
            )
        return (
            f"{kept}; the run is not closed; continue with `market simulate --resume {run}` "
            f"(`market audit {run}` checks it)"
        )

    def _write(self, summary: RunSummary | None, verdict: str, stopped: str = INTERRUPTED) -> None:
        """summary.json: the run's figures (None: interrupted, figures unknown), the audit's
        verdict and the head of the ledger as committed."""
        figures: dict[str, object] = {
            "events": self.ledger.committed - (self.resumed_at or 0),
            "seconds": None, "episodes": None, "steps": None, "stopped": stopped,
            "mean_return": None, "balances": {},
        }  # fmt: skip
        if summary is not None:
            figures = {
                "events": summary.events, "seconds": summary.seconds,
                "episodes": summary.episodes, "steps": summary.steps,
                "stopped": summary.stopped, "mean_return": summary.mean_return,
                "balances": dict(summary.balances),
            }  # fmt: skip
        rundir.write_json(
            self.run / rundir.SUMMARY,
            {
                **figures,
                "budget": {"steps": self.steps, "episodes": self.episodes},
                "audit": verdict,
                "head": self.ledger.head,
                "resumed_at": self.resumed_at,
            },
        )


def check(sim: Simulation) -> None:
    """Every check `prepare` makes of `sim`'s settings, without building or writing anything
    (a sweep checks all its cells so before running one): a one-line ValueError."""
    if sim.variant == "control":
        control_config(sim)
    else:
        checked_config(sim)


def checked_config(sim: Simulation) -> RunConfig:
    """The auction engine's config for `sim` (`auction_config`, an --init source resolved),
    once every setting is known to be one a run can take."""
    if sim.method is not None:
        raise ValueError("--method is for --variant control")
    _kernel(sim)
    config = auction_config(sim)
    rewards = (config.reward_scale, config.reward_offset)
    given = config.primitives is not None or any(r is not None for r in rewards)
    if config.task not in TABULAR_TASKS or given:
        check_task(config.task, config.primitives, *rewards)
    if config.learner is None:
        check_bidder(config.bidder)
    if sim.frozen and (sim.init is None or config.learner is None):
        raise ValueError("--frozen evaluates a snapshot: give --init RUN with --learn/--monolithic")
    if config.economy is not None and config.bidder == "monolithic":
        raise ValueError("an economy needs a society of bidders: drop --monolithic")
    if sim.init is not None:
        config = config.model_copy(update={"init": _init_source(Path(sim.init), config)})
    return config


def _kernel(sim: Simulation) -> KernelChoice:
    for kernel in KERNELS:
        if sim.kernel == kernel:
            return kernel
    raise ValueError(f"unknown kernel {sim.kernel!r}; choose one of: {', '.join(KERNELS)}")


def prepare(sim: Simulation, out: Path | None, resume: Path | None = None) -> Prepared:
    """Everything `sim` needs, in a new run directory (`out`, or runs/NAME), or continuing
    the run `resume` for `sim.steps` more env steps or `sim.episodes` more episodes."""
    if sim.variant == "control":
        if resume is not None:
            raise ValueError("control runs cannot be resumed yet")
        return _prepare_control(sim, out)
    if resume is not None:
        config, run, ledger = _resumed(resume, sim.steps, sim.episodes)
    else:
        config = checked_config(sim)
    kernel = _kernel(sim)
    if config.task in OPTION_TASKS:
        from agents.option_ppo import ensure_options

        ensure_options()  # trained once into the cache (the CLI shows the progress)
    task = task_of(config)
    society = Society.of(task, config.cloned)
    economy = _economy(config, society, ledger if resume is not None else None)
    continue_at = ledger.next_seq if resume is not None else 0
    policy, learner = _policy(config, task, society, economy, continue_at)
    if config.init is not None:
        from agents.training import start_from

        assert learner is not None  # `check` refuses --init without learners
        start_from(learner, Path(config.init.split(" sha256=")[0]))
        learner.frozen = config.frozen
    if resume is None:
        name = f"{file_name(config.task)}-{config.mechanism.value}-{config.bidder}-s{config.seed}"
        run, ledger = new_run(out, name, config.run_id, config.model_dump(mode="json"), sim)
        _record_env(run, task)
    bus = Bus(ledger)
    record = _attached(learner, bus, run, society, resume is not None)

    def go(on_episode: OnEpisode | None) -> RunSummary:
        return simulate(
            config, ledger, policy, on_episode, bus=bus, kernel=kernel, task=task, economy=economy
        )

    def after() -> None:
        if record is not None:
            record.save()

    resumed_at = continue_at if resume is not None else None
    resumable = config.bidder != "monolithic"
    return Prepared(
        run,
        ledger,
        config.steps,
        config.episodes,
        learner,
        go,
        after,
        resumed_at,
        resumable=resumable,
        scalars=_scalars(sim, run, learner),
    )


def _economy(config: RunConfig, society: Society, resumed: DiskLedger | None) -> Economy | None:
    """The run's economy, if it has one: new, or as the `resumed` run's ledger left it."""
    if config.economy is None:
        return None
    if resumed is not None:
        return Economy.restore(config.economy, society, resumed.scan())
    return Economy(config.economy, society)


def _attached(
    learner: LearningSociety | MonolithicPPO | None,
    bus: Bus,
    run: Path,
    society: Society,
    resumed: bool,
) -> TrainingRecord | None:
    """The learners hear the bus, from their last snapshot if the run is `resumed`; their
    training record (None: nothing learns)."""
    if learner is None:
        return None
    from agents.learning import LearningSociety
    from agents.training import TrainingRecord, latest_snapshot, load_snapshot

    learner.attach(bus)
    record = TrainingRecord(run, learner, society)
    snapshot = latest_snapshot(run) if resumed else None
    if snapshot is not None and isinstance(learner, LearningSociety):
        load_snapshot(learner, snapshot)
    return record


def _scalars(sim: Simulation, run: Path, learner: Learner | None) -> Scalars | None:
    """With `--tensorboard DIR`, the run's TensorBoard writer, attached to its learner."""
    if sim.tensorboard is None:
        return None
    from agents.tensorboard import Scalars

    scalars = Scalars(Path(sim.tensorboard), run)
    if learner is not None:
        scalars.attach(learner)
    return scalars


def auction_config(sim: Simulation) -> RunConfig:
    """The auction engine's config for `sim`."""
    learn = sim.learn or sim.monolithic
    task = sim.task or "chain"
    fixed = "truthful" if task in TABULAR_TASKS else "random"  # only tabular tasks have Q*
    concurrency = sim.concurrency if sim.concurrency is not None else (128 if learn else 1)
    return RunConfig(
        task=task,
        mechanism=parse_mechanism("env" if sim.monolithic else sim.mechanism),
        bidder=("monolithic" if sim.monolithic else "ppo") if learn else (sim.bidder or fixed),
        cloned=not (sim.solitary or sim.monolithic),
        episodes=sim.episodes if sim.episodes is not None or sim.steps is not None else 1000,
        steps=sim.steps,
        seed=sim.seed,
        gamma=sim.gamma,
        constant=sim.constant,
        concurrency=concurrency,
        learner=sim.ppo_settings().model_dump() if learn else None,
        frozen=sim.frozen,
        primitives=sim.primitives,
        economy=sim.hayek if sim.economy == "hayek" else None,
        reward_scale=sim.reward_scale,
        reward_offset=sim.reward_offset,
    )


def _record_env(run: Path, task: Task) -> None:
    """A Gymnasium task's env as made (`rundir.ENV`)."""
    from market.gym_tasks import GymTask

    if isinstance(task, GymTask):
        import gymnasium

        rundir.write_json(
            run / rundir.ENV,
            {"id": task.env_id, "gymnasium": gymnasium.__version__, "wrappers": task.wrappers,
             "horizon": task.horizon, "reward_scale": task.reward_scale,
             "reward_offset": task.reward_offset,
             "observation": task.observation_space},
        )  # fmt: skip


def new_run(
    out: Path | None, name: str, run_id: str, config: dict[str, Any], sim: Simulation
) -> tuple[Path, DiskLedger]:
    """A new run directory (`out`, or runs/NAME...) with its configs and an empty ledger:
    config.json (what the engine runs) and simulation.toml (what was asked, re-runnable)."""
    run = rundir.new_run_dir(out, name)
    run.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run / rundir.CONFIG, {"run_id": run_id, **config})
    (run / rundir.SIMULATION).write_text(sim.to_toml(), encoding="utf-8")
    return run, DiskLedger(run / rundir.LEDGER)


def _resumed(
    run: Path, steps: int | None, episodes: int | None
) -> tuple[RunConfig, Path, DiskLedger]:
    """The configuration and ledger of an auction run to continue, for `steps` more env
    steps or `episodes` more episodes (the run's own budget if neither is given)."""
    ledger = rundir.open_run_ledger(run)
    if not (run / rundir.CONFIG).is_file():
        raise ValueError(f"{run}: not a run directory (no {rundir.CONFIG})")
    recorded = json.loads((run / rundir.CONFIG).read_text(encoding="utf-8"))
    recorded.pop("run_id", None)
    if recorded.get("variant") == "control":
        raise ValueError(f"{run} is a control run; control runs cannot be resumed yet")
    config = RunConfig.model_validate(recorded)
    if config.bidder == "monolithic":
        raise ValueError(f"{run} is a monolithic baseline's run; it cannot be resumed yet")
    if config.learner is not None:
        from agents.training import latest_snapshot

        if latest_snapshot(run) is None:
            raise ValueError(f"{run} has no snapshot to resume from")
    if steps is None and episodes is None:
        steps, episodes = config.steps, config.episodes if config.steps is None else None
    return config.model_copy(update={"steps": steps, "episodes": episodes}), run, ledger


def _init_source(run: Path, config: RunConfig) -> str:
    """The latest snapshot of learning run `run`, as `PATH sha256=HEX` (what `init` records)."""
    if config.learner is None:
        raise ValueError("--init starts learners: give --learn or --monolithic")
    from agents.training import latest_snapshot

    if not run.is_dir():
        raise ValueError(f"--init {run}: no such run directory")
    snapshot = latest_snapshot(run)
    if snapshot is None:
        raise ValueError(f"--init {run}: the run has no snapshot to start from")
    return f"{snapshot} sha256={hashlib.sha256(snapshot.read_bytes()).hexdigest()}"


def _policy(
    config: RunConfig,
    task: Task,
    society: Society,
    economy: Economy | None = None,
    continue_at: int = 0,
) -> tuple[Policy, LearningSociety | MonolithicPPO | None]:
    """The run's bidders: fixed ones, a learning society, or the monolithic baseline; with
    an `economy`, they bid for its slots. Fixed bidders continuing a ledger at seq
    `continue_at` draw from the seed's stream keyed by that seq, not again from its start."""
    (policy_seed,) = np.random.SeedSequence(config.seed).spawn(1)
    if continue_at:
        policy_seed = np.random.SeedSequence(config.seed, spawn_key=(0, continue_at))
    if config.learner is None:
        rng = np.random.default_rng(policy_seed)
        bidder = make_bidder(
            config.bidder, task, society, config.gamma, rng, config.constant, economy
        )
        return bidder, None
    from agents.learning import LearningSociety, learner_seed, one_thread
    from agents.ppo_monolithic import MonolithicPPO
    from agents.settings import PPOConfig

    one_thread()
    ppo = PPOConfig.model_validate(config.learner)
    seed = learner_seed(config.seed)
    learner: LearningSociety | MonolithicPPO
    if config.bidder == "monolithic":
        learner = MonolithicPPO(task, ppo, seed)
    else:
        learner = LearningSociety(task, society, ppo, seed, economy)
    return learner, learner


def control_config(sim: Simulation) -> ControlRunConfig:
    """The control engine's config for `sim` (learning agents unless a fixed policy)."""
    from market.control import LEARNING_CONCURRENCY, ControlRunConfig

    learn = sim.bidder is None
    method = (sim.method or "full") if learn else sim.method
    concurrency = sim.concurrency if sim.concurrency is not None else 1
    return ControlRunConfig(
        task=sim.task or "pendulum",
        agents=sim.agents,
        policy="dqn" if learn else str(sim.bidder),
        method=method,
        episodes=sim.episodes if sim.episodes is not None or sim.steps is not None else 100,
        steps=sim.steps,
        seed=sim.seed,
        gamma=sim.gamma,
        concurrency=LEARNING_CONCURRENCY if learn and sim.concurrency is None else concurrency,
        learner=sim.dqn_settings(method).model_dump() if learn and method is not None else None,
        controls=sim.controls,
    )


def _prepare_control(sim: Simulation, out: Path | None) -> Prepared:
    """A control-variant run: agents drive one system (learning unless a fixed policy)."""
    from market.control import simulate_control

    config = control_config(sim)
    chooser, learner = _control_policy(config)
    name = f"{config.task}-control-{config.method or config.policy}-n{config.agents}-s{sim.seed}"
    run, ledger = new_run(out, name, config.run_id, config.model_dump(mode="json"), sim)
    bus = Bus(ledger)
    if learner is not None:
        learner.attach(bus)

    def go(on_episode: OnEpisode | None) -> RunSummary:
        return simulate_control(config, ledger, chooser, on_episode, bus=bus)

    return Prepared(
        run, ledger, config.steps, config.episodes, learner, go, lambda: None, resumable=False,
        scalars=_scalars(sim, run, learner),
    )  # fmt: skip


def _control_policy(config: ControlRunConfig) -> tuple[ControlPolicy, ControlSociety | None]:
    """The control run's policy (and its learner when it learns)."""
    from agents.fixed_control import RandomPolicy, ZeroPolicy
    from market.control import control_task_of

    task = control_task_of(config)
    if config.policy == "zero":
        return ZeroPolicy(task.controls, task.n_agents), None
    if config.policy == "random":
        (rng_seed,) = np.random.SeedSequence(config.seed).spawn(1)
        rng = np.random.default_rng(rng_seed)
        return RandomPolicy(len(task.controls), task.n_agents, rng), None
    from agents.control_learning import ControlSociety
    from agents.learning import learner_seed, one_thread
    from agents.settings import ControlDQNConfig

    one_thread()
    dqn = ControlDQNConfig.model_validate(config.learner)
    budget = config.steps or (config.episodes or 0) * task.horizon
    society = ControlSociety(task, config.accounts, dqn, learner_seed(config.seed), budget)
    return society, society
