"""Gymnasium envs as a society's task (`--task gym:ID`, market/gym_tasks.py): ids, seeds,
termination against time-outs, rewards in credit, observations, the audit re-stepping the
env, another package's tasks, and the one-line refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import polars as pl
import pytest
import torch
from test_audit import falsify, first_seq, rule_broken
from test_rederive import run_into

from agents.encoders import VectorFeatures, observation_features
from agents.fixed_control import RandomPolicy
from agents.settings import GYM_PPO, PPOConfig
from ledger.store import MemoryLedger
from ledger.units import UNIT
from market.audit import audit_frame
from market.control import ControlRunConfig, control_task_of, simulate_control
from market.control_tasks import make_control_task
from market.gym_control import N_CONTROLS, GymControl
from market.gym_tasks import GymTask, GymTaskError, env_return, episode_seed, reward_scale_of
from market.run import RunConfig
from market.tasks import ENTRY_POINTS, Task, check_task, make_task
from simulation.config import Simulation

ROOT = Path(__file__).resolve().parents[1]
MARKET = [sys.executable, "-c", "from cli import main; main()"]


@pytest.fixture(scope="module")
def cartpole() -> pl.DataFrame:
    """Twelve CartPole episodes, four at once, random bidders, CCV."""
    ledger = run_into(MemoryLedger(), task="gym:CartPole-v1", episodes=12, concurrency=4, seed=5)
    return ledger.scan().collect()


def test_state_ids_say_episode_and_step(cartpole: pl.DataFrame) -> None:
    span = GymTask("CartPole-v1").span
    steps = cartpole.filter(pl.col("kind") == "transform")
    assert (steps["state"] == steps["episode"] * span + steps["step"]).all()
    assert (steps["next_state"] == steps["state"] + 1).all()
    starts = cartpole.filter(pl.col("kind") == "episode_start")
    assert (starts["state"] == starts["episode"] * span).all()


def test_each_episode_is_the_env_reset_from_its_seed_and_stepped_by_its_winners(
    cartpole: pl.DataFrame,
) -> None:
    """Replaying one episode's winners on a fresh env, reset with its seed, gives the
    ledger's rewards (0.01 credit a step) and ends where the ledger's episode ends."""
    steps = cartpole.filter((pl.col("kind") == "transform") & (pl.col("episode") == 7))
    paid = cartpole.filter((pl.col("kind") == "reward") & (pl.col("episode") == 7))
    env = gymnasium.make("CartPole-v1")
    env.reset(seed=episode_seed(5, 7))
    terminated = False
    for primitive in steps.sort("step")["primitive"].to_list():
        assert not terminated
        _, reward, terminated, _, _ = env.step(primitive)
        assert reward == 1.0
    assert terminated == steps["done"][-1]
    assert paid["amount"].to_list() == [UNIT // 100] * steps.height


def test_same_seed_same_ledger() -> None:
    def frame() -> pl.DataFrame:
        ledger = run_into(MemoryLedger(), task="gym:CartPole-v1", episodes=6, seed=2)
        return ledger.scan().collect()

    assert frame().equals(frame())


def test_the_audit_re_steps_the_env(cartpole: pl.DataFrame) -> None:
    """Every transformation is re-derived by stepping the env: a reward, a termination or an
    action other than the env's breaks its rule at that event."""
    report = audit_frame(cartpole)
    assert report.ok, report.violation
    assert report.not_rederived == {}
    paid = first_seq(cartpole, "reward", pl.col("step") == 3)
    assert rule_broken(falsify(cartpole, paid, amount=UNIT // 100 + 1)) == ("reward-value", paid)
    end = first_seq(cartpole, "transform", pl.col("done"))
    assert rule_broken(falsify(cartpole, end, done=False)) == ("transition", end)


def test_the_ledger_records_what_the_env_observed(cartpole: pl.DataFrame) -> None:
    """Each EpisodeStart and Transform carries the env's observation of its state, as the
    env gave it (float32): one episode replayed on a fresh env gives the same, and an
    observation other than the env's breaks its rule at that event."""
    start = cartpole.filter((pl.col("kind") == "episode_start") & (pl.col("episode") == 7))
    steps = cartpole.filter((pl.col("kind") == "transform") & (pl.col("episode") == 7))
    env = gymnasium.make("CartPole-v1")
    obs, _ = env.reset(seed=episode_seed(5, 7))
    assert start["obs"].to_list() == [obs.tolist()]
    for primitive, recorded in steps.sort("step").select("primitive", "obs").iter_rows():
        obs = env.step(primitive)[0]
        assert recorded == obs.tolist()
    moved = first_seq(cartpole, "transform", pl.col("step") == 2)
    shifted = [v + 0.25 for v in cartpole.filter(pl.col("seq") == moved)["obs"][0]]
    assert rule_broken(falsify(cartpole, moved, obs=pl.Series([shifted]))) == ("transition", moved)
    began = first_seq(cartpole, "episode_start", pl.col("episode") == 3)
    assert rule_broken(falsify(cartpole, began, obs=None)) == ("episode-start", began)


def test_episodes_far_apart_in_flight_record_their_own_observations() -> None:
    """Episodes 0, 2**16 and 2**18 in flight at once (a long episode beside many short
    ones): their start ids are multiples of 2**16 apart, and each start's observation is
    still its own, as the learners read it and the ledger records it."""
    task = GymTask("CartPole-v1", seed=0)
    episodes = [0, 1 << 16, 1 << 18]
    starts = task.starts(np.array(episodes))
    assert ((starts - starts[0]) % (1 << 16) == 0).all()
    env = gymnasium.make("CartPole-v1")
    firsts = [env.reset(seed=episode_seed(0, e))[0].tolist() for e in episodes]
    assert task.observe(starts).tolist() == firsts  # what the learners read
    assert task.recorded(starts).tolist() == firsts  # what the ledger records


def test_a_time_out_is_not_a_termination() -> None:
    """At the time limit the episode ends without `done` (MiniGrid's own max_steps: 250)."""
    task = GymTask("MiniGrid-DoorKey-5x5-v0", seed=0)
    assert task.horizon == 250
    (state,) = task.starts(np.array([0]))
    noop = task.primitive_names.index("a6")  # MiniGrid's `done` action: nothing happens
    outcomes = [task.step(int(state) + t, noop) for t in range(task.horizon)]
    assert not any(o.done for o in outcomes)
    assert task.stepper.at(0) is None  # the episode is over: its env is free


def test_rewards_in_credit_by_the_scale() -> None:
    assert reward_scale_of("CartPole-v1") == 0.01 and reward_scale_of("FrozenLake-v1") == 1.0
    task = GymTask("CartPole-v1", reward_scale=0.5)
    (state,) = task.starts(np.array([0]))
    assert task.step(int(state), 0).reward == 0.5


def test_rewards_offset_before_the_scale_and_undone_in_the_envs_units() -> None:
    """Acrobot's -1 a step at offset 1 is 0 credit, and its goal (0) 1 credit at scale 1."""
    task = GymTask("Acrobot-v1", reward_scale=2.0, reward_offset=1.0)
    (state,) = task.starts(np.array([0]))
    assert task.step(int(state), 0).reward == 0.0
    assert task.credit(0.0) == 2.0
    assert env_return(task.credit(-1.0) * 3 + task.credit(0.0), 4, 2.0, 1.0) == -3.0
    frame = pl.DataFrame({"credit": [3.0], "steps": [4]})
    undone = frame.select(env_return(pl.col("credit"), pl.col("steps"), 2.0, 1.0))
    assert undone.item() == -2.5


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_the_audit_steps_the_env_under_the_runs_reward_map(offset: float) -> None:
    """A run recorded with offset 1 audits clean only if its Rewards are offset: one stepped
    without the offset breaks `reward-value` at its first step."""
    stepped = GymTask("Acrobot-v1", 3, reward_scale=1.0, reward_offset=offset)
    ledger = run_into(MemoryLedger(), stepped, task="gym:Acrobot-v1", episodes=2,
                      concurrency=2, reward_scale=1.0, reward_offset=1.0)  # fmt: skip
    report = audit_frame(ledger.scan().collect())
    assert report.ok == (offset == 1.0)
    if offset != 1.0:
        assert report.violation is not None and report.violation.rule == "reward-value"


def test_observations_as_the_learners_read_them() -> None:
    lake = GymTask("FrozenLake-v1")
    (state,) = lake.starts(np.array([0]))
    seen = lake.observe(np.array([state]))
    assert seen.shape == (1, 16) and seen[0, 0] == 1.0 and seen.sum() == 1.0  # one-hot, at 0
    grid = GymTask("MiniGrid-DoorKey-5x5-v0")
    assert grid.observation_shape == (3, 7, 7)
    pole = GymTask("CartPole-v1")
    (state,) = pole.starts(np.array([3]))
    obs, _ = gymnasium.make("CartPole-v1").reset(seed=episode_seed(0, 3))
    assert np.array_equal(pole.observe(np.array([state]))[0], obs)
    with pytest.raises(RuntimeError, match="no longer held"):
        pole.observe(np.array([state + 1]))


def test_a_vector_observation_gets_an_mlp_and_an_image_a_cnn() -> None:
    mlp = observation_features((4,), channels=8)
    assert isinstance(mlp, VectorFeatures) and mlp(torch.zeros(2, 4)).shape == (2, 64)
    assert not isinstance(observation_features((3, 7, 7), channels=8), VectorFeatures)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("gym:Nope-v9", "unknown Gymnasium id 'Nope-v9'"),
        ("gym:Pendulum-v1", "Box action space; the auction variant needs Discrete"),
        ("gym:Blackjack-v1", "not ones the bidders read"),
        ("other:Thing", "no package offers tasks as 'other'"),
    ],
)
def test_envs_that_do_not_fit_are_one_line(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        check_task(name)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, GymTaskError) == name.startswith("gym:")


def test_a_bad_task_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for argv in (
        ["--task", "gym:Pendulum-v1"],
        ["--task", "chain", "--reward-scale", "0.1"],
        ["--task", "bandit", "--reward-offset", "1"],
        ["--task", "chain", "--reward-offset", "0"],
    ):
        done = subprocess.run(
            [*MARKET, "simulate", *argv, "--episodes", "2", "--out", str(tmp_path / "r")],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
        assert not (tmp_path / "r").exists()


PLUGIN = """
from market.tasks import Chain

def make(name, seed, gamma):
    if name != "Short":
        raise ValueError(f"mypkg offers Short, not {name!r}")
    task = Chain()
    task.horizon = 3
    return task
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package `mypkg_tasks` offering tasks as `mypkg` through the entry point group, as an
    installed distribution would (its dist-info on the path)."""
    (tmp_path / "mypkg_tasks.py").write_text(textwrap.dedent(PLUGIN), encoding="utf-8")
    info = tmp_path / "mypkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINTS}]\nmypkg = mypkg_tasks:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_another_package_offers_tasks_through_the_entry_point_group(plugin: Path) -> None:
    task = make_task("mypkg:Short")
    assert isinstance(task, Task) and task.name == "mypkg:Short" and task.horizon == 3
    with pytest.raises(ValueError, match="mypkg offers Short, not 'Long'"):
        make_task("mypkg:Long")
    ledger = run_into(MemoryLedger(), task, task="mypkg:Short", episodes=5)
    report = audit_frame(ledger.scan().collect())
    assert report.ok and "not one the audit can make" in report.not_rederived["transition"]
    done = subprocess.run(
        [*MARKET, "simulate", "--task", "mypkg:Short", "--bidder", "random", "--episodes", "4",
         "--out", str(plugin / "run")],
        capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": f"{plugin}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "AUDIT CLEAN" in done.stdout
    listed = subprocess.run(
        [*MARKET, "tasks"], capture_output=True, text=True, cwd=ROOT,
        env={"PYTHONPATH": f"{plugin}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "mypkg:NAME" in listed.stdout


def test_the_reward_scale_is_recorded_only_when_set() -> None:
    """Ledgers written before the setting existed keep their configuration's bytes."""
    assert "reward_" not in RunConfig().model_dump_json()
    scaled = RunConfig(task="gym:CartPole-v1", reward_scale=0.5, reward_offset=-1.0)
    assert RunConfig.model_validate_json(scaled.model_dump_json()) == scaled
    assert scaled.run_id.startswith("gym-CartPole-v1-ccv-s0-")


def test_a_gymnasium_task_starts_from_its_own_ppo_settings() -> None:
    """Unless the run sets them; and simulation.toml records what was resolved, so running it
    again runs the same settings."""
    gym = Simulation.model_validate({"task": "gym:CartPole-v1", "ppo": {"hidden": 32}})
    assert gym.ppo.hidden == 32
    assert {k: getattr(gym.ppo, k) for k in GYM_PPO if k != "hidden"} == {
        k: v for k, v in GYM_PPO.items() if k != "hidden"
    }
    assert Simulation(task="chain").ppo == PPOConfig()
    again = Simulation.model_validate(tomllib.loads(gym.to_toml()))
    assert again.ppo == gym.ppo


# --- the control variant over a Box action space ----------------------------------------------


@pytest.fixture(scope="module")
def pendulum() -> pl.DataFrame:
    """Three Gymnasium Pendulum episodes driven by two random agents, two at once."""
    config = ControlRunConfig(
        task="gym:Pendulum-v1", agents=2, policy="random", episodes=3, concurrency=2, seed=4
    )
    ledger = MemoryLedger()
    simulate_control(config, ledger, RandomPolicy(N_CONTROLS, 2, np.random.default_rng(0)))
    return ledger.scan().collect()


def test_two_agents_share_one_torque_and_its_reward() -> None:
    """One action dimension: each agent's controls span half the torque range, the plant
    gets their sum, and each agent earns half the env's reward."""
    plant = make_control_task("gym:Pendulum-v1", 2)
    assert isinstance(plant, GymControl) and plant.shared and plant.horizon == 200
    assert plant.controls.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    x = plant.reset(np.random.default_rng(0), 1)
    u = np.array([[1.0, 0.5]])
    env: Any = gymnasium.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    env.state = x[0].copy()
    _, reward, *_ = env.step(np.array([1.5]))
    assert np.array_equal(plant.f(x, u)[0], env.state)
    assert plant.g(x, u).tolist() == [[reward / 2, reward / 2]]
    env.state = x[0].copy()
    assert np.array_equal(plant.features(x)[0], env._get_obs())


def test_one_agent_with_the_joint_controls_of_n_drives_the_whole_range() -> None:
    """The single-DQN reference: one agent with `--controls 4N+1` has every sum of N agents'
    controls as one of its own, and an even count (no 0 among them) is refused."""
    two = make_control_task("gym:Pendulum-v1", 2)
    sums = {round(a + b, 9) for a in two.controls for b in two.controls}
    joint = ControlRunConfig(task="gym:Pendulum-v1", agents=1, controls=9, policy="zero")
    one = control_task_of(joint)
    assert {round(c, 9) for c in one.controls} == sums
    assert "controls" not in ControlRunConfig(task="gym:Pendulum-v1").model_dump()
    with pytest.raises(ValueError, match="must be odd"):
        ControlRunConfig(task="gym:Pendulum-v1", agents=1, controls=8)


def test_the_audit_re_derives_every_plant_step_to_the_bit(pendulum: pl.DataFrame) -> None:
    report = audit_frame(pendulum)
    assert report.ok and report.not_rederived == {}, report.violation
    seq = first_seq(pendulum, "transition", pl.col("step") == 5)
    theta, omega = pendulum.filter(pl.col("seq") == seq)["next_x"][0].to_list()
    moved = falsify(pendulum, seq, next_x=[float(np.nextafter(theta, 4.0)), omega])
    assert rule_broken(moved) == ("transition", seq)


def test_a_plant_that_does_not_fit_is_one_line() -> None:
    with pytest.raises(GymTaskError, match="Discrete action space; the control variant needs"):
        make_control_task("gym:CartPole-v1", 2)
