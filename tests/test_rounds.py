"""The round kernel writes, row for row and byte for byte, the episode kernel's ledger."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from agents.fixed import make_bidder
from agents.learning import run_learning
from agents.settings import PPOConfig
from ledger.disk import DiskLedger
from ledger.store import Ledger, MemoryLedger
from market.audit import audit
from market.core import EpisodeResult
from market.run import KernelChoice, RunConfig, simulate
from market.slots import Stepped
from market.society import Society
from market.tasks import make_task


def run(
    config: RunConfig, kernel: KernelChoice, ledger: Ledger | None = None
) -> tuple[Ledger, list[EpisodeResult]]:
    """`config` with its fixed bidder (seeded) under `kernel`; the finished episodes."""
    ledger = ledger if ledger is not None else MemoryLedger()
    task = make_task(config.task)
    society = Society.of(task, config.cloned)
    rng = np.random.default_rng(config.seed + 100)
    policy = make_bidder(config.bidder, task, society, config.gamma, rng)
    results: list[EpisodeResult] = []
    simulate(config, ledger, policy, results.append, kernel=kernel)
    return ledger, results


def frame(ledger: Ledger) -> pl.DataFrame:
    """Every stored event, in order."""
    return ledger.scan().collect()


@pytest.mark.parametrize("mechanism", ["ccv", "v", "bb", "fp", "env"])
@pytest.mark.parametrize("task", ["bandit", "chain", "duality"])
@pytest.mark.parametrize("concurrency", [1, 5])
def test_same_ledger_as_the_episode_kernel(task: str, mechanism: str, concurrency: int) -> None:
    """Random bidders, every task and mechanism: the same events and the same episodes."""
    config = RunConfig(
        task=task, mechanism=mechanism, bidder="random", episodes=30, concurrency=concurrency
    )
    by_episodes, finished_e = run(config, "episodes")
    by_rounds, finished_r = run(config, "rounds")
    assert frame(by_rounds).equals(frame(by_episodes))
    assert finished_r == finished_e and len(finished_r) == 30
    assert audit(by_rounds).ok


@pytest.mark.parametrize("cloned", [True, False])
def test_solitary_and_cloned_societies_agree(cloned: bool) -> None:
    """Both society shapes give the same ledger under either kernel."""
    config = RunConfig(mechanism="v", bidder="random", cloned=cloned, episodes=20, concurrency=3)
    assert frame(run(config, "rounds")[0]).equals(frame(run(config, "episodes")[0]))


def test_a_step_budget_stops_new_episodes_alike() -> None:
    """With `steps`, both kernels start the same episodes and let those under way finish."""
    config = RunConfig(
        task="chain", bidder="random", episodes=None, steps=777, concurrency=8, seed=3
    )
    (a, done_a), (b, done_b) = run(config, "episodes"), run(config, "rounds")
    assert frame(a).equals(frame(b))
    assert done_a == done_b
    assert sum(r.steps for r in done_b) >= 777


def test_continuing_a_ledger_agrees() -> None:
    """A second run appended to a used ledger continues it the same way under both kernels."""
    config = RunConfig(task="duality", mechanism="bb", bidder="random", episodes=9, concurrency=4)
    ledgers = []
    for kernel in ("episodes", "rounds"):
        ledger, _ = run(config, kernel)
        run(config.model_copy(update={"seed": 1}), kernel, ledger)
        ledgers.append(ledger)
    assert frame(ledgers[1]).equals(frame(ledgers[0]))
    assert audit(ledgers[1]).ok


def _segments(path: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.glob("seg-*")))).hexdigest()


def test_same_segment_bytes_on_disk(tmp_path: Path) -> None:
    """Segments close at the same transaction (inside a round's batch) and hash the same."""
    config = RunConfig(mechanism="v", bidder="random", episodes=200, concurrency=16)
    heads = []
    for kernel in ("episodes", "rounds"):
        ledger = DiskLedger(tmp_path / kernel, batch_events=1000)
        run(config, kernel, ledger)
        heads.append((ledger.head, _segments(tmp_path / kernel), len(ledger.links)))
    assert heads[0] == heads[1]
    assert heads[0][2] > 3


def test_learning_gives_the_same_ledger_and_weights() -> None:
    """PPO bidders: the same samples in the same order reach the learner under both kernels,
    so the ledgers and the final weights are identical."""
    ppo = PPOConfig(batch=128, minibatch=64, policy_lr=3e-3)
    config = RunConfig(
        task="chain",
        bidder="ppo",
        episodes=None,
        steps=2500,
        concurrency=12,
        learner=ppo.model_dump(),
    )
    out = []
    for kernel in ("episodes", "rounds"):
        ledger = MemoryLedger()
        _, learner = run_learning(config, ledger, kernel=kernel)
        weights = torch.cat([p.detach().flatten() for p in learner.agent.bank.parameters()])
        out.append((frame(ledger), weights, len(learner.updates)))
    assert out[0][2] >= 4 and out[0][2] == out[1][2]
    assert out[1][0].equals(out[0][0])
    assert torch.equal(out[1][1], out[0][1])


def test_auto_takes_rounds_for_concurrent_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` runs the round kernel when several episodes run at once, else the episode one."""
    import market.rounds

    rounds: list[int] = []
    original = market.rounds.RoundKernel._step

    def counted(
        self: market.rounds.RoundKernel, idx: np.ndarray, now: float, drawn: np.ndarray
    ) -> Stepped:
        rounds.append(len(idx))
        return original(self, idx, now, drawn)

    monkeypatch.setattr(market.rounds.RoundKernel, "_step", counted)
    run(RunConfig(bidder="random", episodes=4, concurrency=1), "auto")
    assert rounds == []
    run(RunConfig(bidder="random", episodes=4, concurrency=4), "auto")
    assert rounds and rounds[0] == 4
