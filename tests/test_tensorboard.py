"""`market simulate --tensorboard DIR`: metrics and returns as TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from analyses.wealth import returns
from cli import app
from ledger.units import UNIT
from simulation.rundir import open_run_ledger


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _simulate(*args: str) -> None:
    result = CliRunner().invoke(app, ["simulate", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(autouse=True)
def _uncut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKET_BUDGET_SCALE", raising=False)


def test_a_learning_run_writes_its_metrics_and_returns(tmp_path: Path) -> None:
    learn = ["--task", "chain", "--learn", "--steps", "3000", "--set", "ppo.batch=256",
             "--no-audit"]  # fmt: skip
    _simulate(*learn, "--seed", "0", "--tensorboard", str(tmp_path / "tb"), "--out",
              str(tmp_path / "s0"))  # fmt: skip
    _simulate(*learn, "--seed", "0", "--out", str(tmp_path / "plain"))
    scalars = _scalars(tmp_path / "tb" / "s0")
    ends = open_run_ledger(tmp_path / "s0").scan().filter(pl.col("kind") == "episode_end")
    ended = ends.sort("seq").select("episode_return").collect()["episode_return"]
    # one scalar per finished episode, in the order they ended, its return in credit
    got = [value for _, value in scalars["episode/return"]]
    assert got == pytest.approx((ended / UNIT).to_list(), abs=1e-6)
    assert len(got) == returns(open_run_ledger(tmp_path / "s0").scan()).height
    steps = [step for step, _ in scalars["episode/return"]]
    assert steps == sorted(steps) and steps[-1] <= 3000 + 128 * 20
    # one point per PPO update, the metrics.parquet columns, numbered from 1
    losses = scalars["update/policy_loss"]
    assert [step for step, _ in losses] == list(range(1, len(losses) + 1))
    assert len(losses) >= 2 and "update/entropy" in scalars
    # the scalars are a view: the ledger is the same with or without them
    assert open_run_ledger(tmp_path / "s0").head == open_run_ledger(tmp_path / "plain").head


def test_one_run_per_seed(tmp_path: Path) -> None:
    for seed in ("0", "1"):
        _simulate("--variant", "control", "--task", "integrator", "--steps", "600",
                  "--seed", seed, "--tensorboard", str(tmp_path / "tb"), "--no-audit",
                  "--out", str(tmp_path / f"ctl-s{seed}"))  # fmt: skip
    runs = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert runs == ["ctl-s0", "ctl-s1"]
    for run in runs:
        scalars = _scalars(tmp_path / "tb" / run)
        assert "episode/return" in scalars and "update/loss" in scalars
