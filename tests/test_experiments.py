"""The experiment scripts' criteria, windows and summaries, on hand-made episode tables whose
answers are worked out by hand: the figures docs/results.md reports are made by these."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from ledger.events import ENVIRONMENT
from ledger.units import UNIT
from market.control_tasks import Integrator, make_control_task
from market.core import EpisodeResult
from market.mental_rotation import NODES
from market.tasks import make_task

# The scripts run from experiments/ and import each other as top-level modules.
sys.path.append(str(Path(__file__).resolve().parents[1] / "experiments"))  # after Gymnasium
import control
import economy
import gym_envs
import mental_rotation
import pool
import tabular
import two_rooms
from generated import save_data

SCHEMA: dict[str, Any] = {
    "seq": pl.Int64, "kind": pl.String, "episode": pl.Int64, "step": pl.Int64,
    "src": pl.String, "dst": pl.String, "amount": pl.Int64, "primitive": pl.Int64,
    "state": pl.Int64, "duration": pl.Float64, "steps": pl.Int64, "episode_return": pl.Int64,
    "controls": pl.List(pl.Float64), "next_x": pl.List(pl.Float64),
}  # fmt: skip
"""The ledger columns the scripts read, with the dtypes of a ledger's scan."""


def events(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    """A hand-made ledger scan: one row per event, numbered in order, absent fields null."""
    return pl.DataFrame([{"seq": i, **row} for i, row in enumerate(rows)], schema=SCHEMA).lazy()


def credit(amount: float) -> int:
    """`amount` credit in units."""
    return round(amount * UNIT)


def saved(tmp_path: Path, name: str, **frames: pl.DataFrame) -> Path:
    """A saved data directory `name` holding `frames` as Parquet, as a script saves them."""
    data = tmp_path / name
    data.mkdir()
    for key, frame in frames.items():
        frame.write_parquet(data / f"{key}.parquet")
    return data


def md_rows(table: str) -> list[list[str]]:
    """The body rows of the markdown tables in `table`, split into cells."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


# --- tabular.py: Bandit, Chain and Duality ------------------------------------------------


def setting(task: str) -> tabular.Setting:
    return next(s for s in tabular.SETTINGS if s.task == task)


def test_tabular_criterion_waits_for_a_full_window_of_100_episodes() -> None:
    """Chain: solved at the first episode that ends a full window of 100 episodes whose mean
    return is >= 0.75, with the env steps taken by then. 94 goals in 100 (0.752) meet it; 93
    (0.744) do not, and the next goal, pushing a failure out of the window, does."""
    for failures, solved_at in ((6, 100 * 5), (7, 101 * 5)):
        tracker = tabular._Tracker(setting("chain"), budget=1000)
        returns = [0.0] * failures + [0.8] * (200 - failures)
        for i, r in enumerate(returns):
            tracker.on_episode(EpisodeResult(episode=i, steps=5, episode_return=credit(r)))
            if i == 98:  # 99 episodes of 100: no verdict yet, whatever their returns
                assert tracker.hit_steps is None
        assert tracker.hit_steps == solved_at
        assert tracker.score() == pytest.approx(0.8)  # the last 100 all reached the goal


def test_tabular_bandit_criterion_is_arm_3s_share_of_the_last_2000_episodes() -> None:
    """Bandit: an episode counts when its reward is arm 3's 0.8; solved when 90% of the last
    2000 did. 200 other arms then 1800 arm-3 wins: solved at episode 2000 (its one step
    each); 201 others: one episode later."""
    for others, solved_at in ((200, 2000), (201, 2001)):
        tracker = tabular._Tracker(setting("bandit"), budget=1_500_000)
        returns = [0.6, 0.2, 0.4] * (others // 3) + [0.6] * (others % 3) + [0.8] * 2100
        for i, r in enumerate(returns):
            tracker.on_episode(EpisodeResult(episode=i, steps=1, episode_return=credit(r)))
        assert tracker.hit_steps == solved_at
        assert tracker.score() == 1.0


def test_tabular_score_is_the_windows_mean_and_the_curve_a_point_per_budget_percent() -> None:
    """The running sum gives the window's mean after any number of episodes; the curve takes
    a point whenever another 1% of the budget (here 10 env steps) has been taken."""
    tracker = tabular._Tracker(setting("duality"), budget=1000)
    rng = np.random.default_rng(0)
    returns = rng.choice([-1.0, 0.5, 3.0, 5.0], size=1234)
    for i, r in enumerate(returns):
        tracker.on_episode(EpisodeResult(episode=i, steps=5, episode_return=credit(r)))
    assert tracker.score() == pytest.approx(returns[-100:].mean(), abs=1e-9)
    steps = [p["steps"] for p in tracker.curve]
    assert steps[:4] == [5, 10, 20, 30]  # the first episode, then every 10 env steps
    assert len(steps) == 1 + 1234 * 5 // 10


@pytest.mark.parametrize(
    ("task", "greedy", "expected"),
    [
        ("chain", [1, 1, 1, 1, 1, 0], 0.8),  # right to the goal
        ("chain", [0] * 6, 0.0),  # left for 20 steps
        ("chain", [1, 0, 1, 1, 1, 1], 0.0),  # 0 -> 1 -> 0 -> ... never past 1
        ("duality", [1, 0, 0], 5.0),  # a1, a0, a1, ...: 0.5 for each of 10 steps
        ("duality", [0, 0, 0], -9.0),  # a0 into the absorbing state: 0, then -1 nine times
        ("duality", [1, 1, 0], 0.5 + 9 * 0.3),  # a1 then a1 at state 1 forever
    ],
)
def test_tabular_greedy_return_follows_the_greedy_primitives(
    task: str, greedy: list[int], expected: float
) -> None:
    assert tabular._greedy_return(make_task(task), np.array(greedy)) == pytest.approx(expected)


def test_tabular_task_metrics_of_hand_made_bids() -> None:
    """Greedy = the primitive with the highest mean bid per state (named by its last
    letter); |bid - Q*| over the last allocations; Bandit's arm-3 share and mean bids."""
    chain = make_task("chain")
    means = np.array([[0.1, 0.2, 0.1, 0.1, 0.1, 0.9], [0.5, 0.6, 0.5, 0.5, 0.5, 0.1]])
    last = pl.DataFrame(
        {"state": [4, 3], "primitive": [1, 0], "amount": [credit(0.7), credit(0.3)]}
    )
    got = tabular._task_metrics(chain, setting("chain"), means, last)
    q_3_left = 0.99 * 0.8 * 0.99**2  # L from 3 to 2, then R, R to the goal
    assert got["greedy"] == "RRRRRL" and got["greedy_return"] == pytest.approx(0.8)
    assert got["mean_abs_bid_minus_q"] == pytest.approx((0.1 + abs(0.3 - q_3_left)) / 2)
    bandit = make_task("bandit")
    last = pl.DataFrame({"state": [0] * 4, "primitive": [3, 3, 1, 3], "amount": [1] * 4})
    got = tabular._task_metrics(bandit, setting("bandit"), np.array([[0.2], [0.3], [0.1], [0.7]]),
                                last)  # fmt: skip
    assert got["greedy"] == "3" and got["greedy_return"] == pytest.approx(0.8)
    assert got["arm3_share"] == 0.75 and got["mean_bids"] == "0.20 0.30 0.10 0.70"
    duality = tabular._task_metrics(
        make_task("duality"), setting("duality"), np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.4]]),
        last,
    )  # fmt: skip
    assert duality == {"greedy": "101", "greedy_return": pytest.approx(5.0)}  # no Q* gap


def test_tabular_tables_give_the_median_and_range_over_seeds_and_count_the_solved() -> None:
    """A cell is median [min, max] over seeds, or the value when all agree; steps to the
    criterion over the seeds that met it (`reached` counts them; none: -); greedy is seed
    0's."""
    runs = pl.DataFrame(
        {
            "task": ["chain"] * 5,
            "label": ["CCV"] * 3 + ["Vickrey"] * 2,
            "seed": [0, 1, 2, 0, 1],
            "steps_to_criterion": [100, None, 300, None, None],
            "seconds_to_criterion": [1.0, None, 3.0, None, None],
            "final_score": [0.8, 0.2, 0.79, 0.1, 0.3],
            "mean_abs_bid_minus_q": [0.3, 0.2, 0.1, 0.5, 0.25],
            "steps_per_s": [10.0, 20.0, 30.0, 5.0, 7.0],
            "greedy_return": [0.8, 0.0, 0.8, 0.0, 0.0],
            "greedy": ["RRRRRR", "LRLRLR", "RRRRRL", "LLLLLL", "RRRRRR"],
            "audit_clean": [True, True, True, True, False],
        },
        schema_overrides={"steps_to_criterion": pl.Int64, "seconds_to_criterion": pl.Float64},
    )
    rows = md_rows(tabular.summary_table(runs).markdown())
    assert rows[0][:4] == ["task", "setting", "seeds", "reached"]
    assert rows[1:] == [
        ["chain", "CCV", "3", "2", "200 [100, 300]", "2.0 [1.0, 3.0]", "0.790 [0.200, 0.800]",
         "0.200 [0.100, 0.300]", "20 [10, 30]", "0.80 [0.00, 0.80]", "RRRRRR", "-", "True"],
        ["chain", "Vickrey", "2", "0", "-", "-", "0.200 [0.100, 0.300]",
         "0.375 [0.250, 0.500]", "6 [5, 7]", "0.00", "LLLLLL", "-", "False"],
    ]  # fmt: skip


def test_tabular_epochs_fold_the_ledger_into_epochs_of_4096_env_steps() -> None:
    """An episode belongs to the epoch in which the finished episodes' env steps pass its
    end; an incomplete last epoch is dropped. Episodes of 2048 and 2048 steps fill epoch 0,
    one of 4095 and one of 1 fill epoch 1, and the last 100 steps are no epoch."""
    lengths, returns = [2048, 2048, 4095, 1, 100], [0.8, 0.0, 0.8, 0.8, 0.8]
    ledger = events([
        {"kind": "episode_end", "episode": i, "steps": n, "episode_return": credit(r)}
        for i, (n, r) in enumerate(zip(lengths, returns, strict=True))
    ])  # fmt: skip
    table = tabular.epoch_table(ledger, [1.5, 2.5, 9.9])
    assert table.rows() == [(0, 2, 0.4, 0.5, 1.5), (1, 2, 0.8, 1.0, 2.5)]
    assert table.columns == ["epoch", "episodes", "train_return", "share_08", "seconds"]


def test_tabular_first_epochs_by_one_epoch_and_by_the_mean_of_five() -> None:
    """The first epoch at or above the threshold, and the first whose mean with the four
    before it is, as env steps at the epoch's end; null if none."""
    returns = [0.1, 0.76, 0.8, 0.8, 0.8, 0.8]
    seconds = [float(e) for e in range(6)]
    epochs = pl.DataFrame({"task": "chain", "label": "CCV", "seed": 0, "epoch": range(6),
                           "train_return": returns, "seconds": seconds})  # fmt: skip
    hits = tabular.first_epochs(epochs, "train_return", 0.75)
    assert hits.select("single_steps", "single_seconds", "moving_steps").row(0) == (
        2 * 4096, 1.0, 6 * 4096,
    )  # fmt: skip
    assert tabular.first_epochs(epochs, "train_return", 0.9)["moving_steps"].to_list() == [None]


# --- two_rooms.py: env steps to solve -------------------------------------------------------


def option_episodes(reached: list[bool]) -> pl.LazyFrame:
    """Episodes of two option calls each (1 and 2 env steps), reaching the goal or not."""
    rows: list[dict[str, Any]] = []
    for episode, hit in enumerate(reached):
        rows += [{"kind": "allocate", "episode": episode}]
        rows += [{"kind": "transform", "episode": episode, "duration": d} for d in (1.0, 2.0)]
        rows += [{"kind": "episode_end", "episode": episode, "episode_return": credit(hit)}]
    return events(rows)


def test_two_rooms_solves_when_90_of_the_last_100_episodes_reach_the_goal() -> None:
    """Env steps are the options' durations (3 per episode here). The share is over a full
    window of 100 episodes (0 before); 90 of 100 solves, 89 does not."""
    for failures, episode in ((10, 99), (11, 100), (0, 99)):
        progress = two_rooms._progress(
            option_episodes([False] * failures + [True] * (150 - failures))
        )
        assert progress["env_steps"].to_list() == [3 * (i + 1) for i in range(150)]
        assert progress["success"][:99].to_list() == [0.0] * 99
        assert two_rooms.steps_to_solve(progress) == 3 * (episode + 1)
    never = two_rooms._progress(option_episodes([True, False] * 100))
    assert never["success"][-1] == 0.5 and two_rooms.steps_to_solve(never) is None


def test_two_rooms_table_gives_the_median_and_range_over_the_seeds_that_solved(
    tmp_path: Path,
) -> None:
    runs = pl.DataFrame(
        {
            "method": ["society"] * 3,
            "pretrain_env_steps_to_solve": [100_000, None, 3_000],
            "pretrain_final_success": [0.5, 0.9, 0.2],
            "pretrain_env_steps_per_s": [1000.0, 3000.0, 500.0],
            "pretrain_audit_clean": [True, True, True],
            "transfer_env_steps_to_solve": [None, None, None],
            "transfer_final_success": [0.1, 0.2, 0.3],
            "transfer_env_steps_per_s": [10.0, 20.0, 30.0],
            "transfer_audit_clean": [True, False, True],
        },
        schema_overrides={"transfer_env_steps_to_solve": pl.Int64},
    )
    table, transfer = two_rooms.tables(saved(tmp_path, "two-rooms", runs=runs))
    assert md_rows(table.markdown())[1:] == [
        ["society", "pretrain", "3", "51,500 [3,000, 100,000]", "2/3", "0.50", "1,000", "True"],
        ["society", "transfer", "3", "-", "0/3", "0.20", "20", "False"],
    ]
    assert md_rows(transfer.markdown())[1:] == [
        ["society: env steps to solve, transfer / pretrain (medians)", "-"]
    ]


def test_two_rooms_transfer_compares_medians_over_the_seeds_that_solved(tmp_path: Path) -> None:
    """Society: pretrain 100k and 200k (median 150k), transfer 30k and 60k (45k): 0.30x.
    Monolithic: pretrain 100k, transfer 90k and an unsolved seed: 0.90x; 90k / 45k = 2.00x,
    and the slowest society seed (60k) beats the fastest monolithic one (90k)."""
    runs = pl.DataFrame(
        {
            "method": ["society", "society", "monolithic", "monolithic"],
            "pretrain_env_steps_to_solve": [100_000, 200_000, 100_000, None],
            "transfer_env_steps_to_solve": [30_000, 60_000, 90_000, None],
        }
    )
    assert two_rooms.transfer(runs).rows() == [
        ("society: env steps to solve, transfer / pretrain (medians)", "0.30x"),
        ("monolithic: env steps to solve, transfer / pretrain (medians)", "0.90x"),
        ("transfer env steps to solve, monolithic / society (medians)", "2.00x"),
        ("every society seed transfers in fewer env steps than every monolithic seed", "yes"),
    ]


# --- mental_rotation.py: the functions chosen per input kind ------------------------------


def test_mental_rotation_choices_per_input_kind() -> None:
    """Per input kind: the mean test reward, the most frequent pair of functions, its share
    of the kind's episodes, and whether it is the kind's solution (shift back, then turn
    back)."""
    plays = [  # (digit, kind, first, second, reward)
        (0, 0, 3, 1, 1), (1, 0, 3, 1, 1), (2, 0, 3, 1, 0), (3, 0, 0, 1, 0),  # right, rotate-60
        (4, 5, 2, 0, 1), (5, 5, 4, 4, 0), (6, 5, 4, 4, 0),  # up, up; left, rotate+60 solves
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for episode, (digit, kind, first, second, reward) in enumerate(plays):
        state = (digit * 8 + kind) * NODES
        rows += [
            {"kind": "allocate", "episode": episode, "step": 0, "state": state,
             "primitive": first},
            {"kind": "allocate", "episode": episode, "step": 1, "state": state + 1 + first,
             "primitive": second},
            {"kind": "episode_end", "episode": episode, "episode_return": credit(reward)},
        ]  # fmt: skip
    choices = mental_rotation._choices(events(rows))
    assert choices == [
        {"input_kind": "rotate+60 left", "reward": 0.5, "chosen": "right, rotate-60",
         "share": 0.75, "correct": True},
        {"input_kind": "rotate-60 right", "reward": pytest.approx(1 / 3), "chosen": "up, up",
         "share": pytest.approx(2 / 3), "correct": False},
    ]  # fmt: skip


def test_mental_rotation_tables_give_the_median_and_range_over_seeds(tmp_path: Path) -> None:
    runs = pl.DataFrame(
        {
            "seed": [0, 1, 2],
            "test_reward": [0.9, 0.95, 0.8],
            "final_train_reward": [0.5, 0.7, 0.6],
            "train_steps": [10, 20, 30],
            "train_seconds": [1.0, 2.0, 3.0],
            "steps_per_s": [10.0, 10.0, 10.0],
            "solved_kinds": [8, 7, 8],
            "audit_clean": [True, True, True],
        }
    )
    choices = pl.DataFrame(
        {
            "seed": [0, 1, 2],
            "input_kind": ["rotate+60 left"] * 3,
            "reward": [0.9, 0.5, 0.7],
            "chosen": ["right, rotate-60", "up, up", "right, rotate-60"],
            "share": [0.9, 0.4, 0.8],
            "correct": [True, False, True],
        }
    )
    data = saved(tmp_path, "mental-rotation", runs=runs, choices=choices)
    summary, kinds = (md_rows(t.markdown()) for t in mental_rotation.tables(data))
    assert summary[1] == ["3", "0.900 [0.800, 0.950]", "0.600 [0.500, 0.700]", "20 [10, 30]",
                          "2 [1, 3]", "10", "8, 7, 8", "True"]  # fmt: skip
    assert kinds[1] == ["rotate+60 left", "0.700", "right, rotate-60", "2", "0.80"]


# --- control.py: held the band, returns per agent, psi --------------------------------------


class ShortIntegrator(Integrator):
    """The integrator with 8-step episodes: the last quarter is steps 6 and 7."""

    horizon = 8


IN, OUT = [0.0, 0.0], [0.5, 0.0]
"""A state inside the goal band (|p| < 0.05, |v| < 0.1), and one outside it."""


def control_episodes() -> pl.LazyFrame:
    """Three 8-step episodes of two agents. 0 and 1 run side by side (0's step first), then
    2. Episode 0 is in the band at steps 6 and 7 (held); 1 at steps 2 and 7 (reached, not
    held); 2 never. Controls: (1, 1) agree, (1, -1) disagree, (0, 1) agree (+1 at 0)."""
    inside = {0: {6, 7}, 1: {2, 7}, 2: set()}
    controls = {0: [1.0, 1.0], 1: [1.0, -1.0], 2: [0.0, 1.0]}
    rewards = {0: (-2.0, -4.0), 1: (1.0, -3.0), 2: (-5.0, -5.0)}
    rows: list[dict[str, Any]] = []
    for block in ((0, 1), (2,)):
        for step in range(8):
            for episode in block:
                rows.append({"kind": "transition", "episode": episode, "step": step,
                             "controls": controls[episode],
                             "next_x": IN if step in inside[episode] else OUT})  # fmt: skip
    for episode, paid in rewards.items():
        for agent, r in zip(("alice", "bob"), paid, strict=True):
            src, dst = (ENVIRONMENT, agent) if r > 0 else (agent, ENVIRONMENT)
            rows.append({"kind": "reward", "episode": episode, "step": 7, "src": src,
                         "dst": dst, "amount": credit(abs(r))})  # fmt: skip
    return events(rows)


def test_control_episode_table_holds_the_band_only_through_the_whole_last_quarter() -> None:
    """Held: in the band at every step of the last quarter; reached: at any step. Env steps
    count every episode's steps in ledger order; the return per agent is the team's over the
    agents; psi's share over steps and agents; the end error is the last step's distance
    from the goal (|p| here)."""
    table = control.episode_table(control_episodes(), ShortIntegrator(2))
    assert table.select(
        "episode", "env_steps", "held", "reached", "first_in_band", "coordinating",
        "team_return", "return_per_agent", "end_error",
    ).rows() == [
        (0, 15, True, True, 13, 1.0, -6.0, -3.0, 0.0),
        (1, 16, False, True, 6, 0.0, -2.0, -1.0, 0.0),
        (2, 24, False, False, None, 1.0, -10.0, -5.0, 0.5),
    ]  # fmt: skip


def test_control_episode_table_lists_episodes_in_the_order_they_ended() -> None:
    """The summary's last tenth and the curve's blocks read episodes in the order they
    ended: the rewards joined in keep that order, whatever order the returns come in."""
    n = 300
    rows: list[dict[str, Any]] = []
    for k, episode in enumerate(reversed(range(n))):  # the last-numbered episode ends first
        rows.append({"kind": "transition", "episode": episode, "step": 0,
                     "controls": [0.0, 0.0], "next_x": OUT})  # fmt: skip
        rows.append({"kind": "reward", "episode": episode, "step": 0, "src": "alice",
                     "dst": ENVIRONMENT, "amount": credit(k + 1)})  # fmt: skip
    table = control.episode_table(events(rows), ShortIntegrator(2))
    assert table["env_steps"].to_list() == list(range(1, n + 1))
    assert table["episode"].to_list() == list(reversed(range(n)))
    assert table["team_return"].to_list() == pytest.approx([-(k + 1.0) for k in range(n)])


def test_control_psi_sums_the_others_controls_over_the_others_only() -> None:
    """psi_i = sgn(u_i * sum_{j != i} u_j), +1 at 0 (docs/control.md). With the pendulum's
    four-agent controls (-u, -u/2, 0, u), agent 1's others sum to exactly 0 (+1), though
    total - u_1 leaves 1e-16 in floats; agents 0 and 3 disagree with theirs: 2 of 4."""
    task = make_control_task("pendulum", 4)
    u = task.controls
    joint = [float(u[0]), float(u[1]), float(u[2]), float(u[4])]
    assert joint[0] + joint[1] + joint[2] + joint[3] - joint[1] != 0.0  # the residue
    frame = events([{"kind": "transition", "episode": 0, "step": k, "controls": joint,
                     "next_x": [np.pi, 0.0]} for k in range(task.horizon)]
                   + [{"kind": "reward", "episode": 0, "step": 0, "src": "a", "dst": ENVIRONMENT,
                       "amount": 1}])  # fmt: skip
    assert control.episode_table(frame, task)["coordinating"].to_list() == [0.5]


def test_control_summary_takes_the_last_tenth_of_episodes() -> None:
    """Final figures over the last 10% of episodes (at least one); steps to hold: the end of
    the first held episode; steps to reach: the first step in the band; psi over all."""
    n = 20
    episodes = pl.DataFrame(
        {
            "episode": range(n),
            "env_steps": [10 * (i + 1) for i in range(n)],
            "held": [i in (5, 18) for i in range(n)],
            "reached": [i >= 3 for i in range(n)],
            "first_in_band": [None] * 3 + [10 * i + 7 for i in range(3, n)],
            "coordinating": [0.5] * 10 + [1.0] * 10,
            "return_per_agent": [float(-i) for i in range(n)],
        }
    )
    row, curve = control.summarise(episodes, ShortIntegrator(2))
    assert row == {
        "final_return_per_agent": -18.5,  # episodes 18 and 19
        "held_share": 0.5,
        "steps_to_reach": 37,
        "steps_to_hold": 60,
        "psi_plus_share": 0.75,
        "episodes": 20,
    }
    assert [p["env_steps"] for p in curve] == episodes["env_steps"].to_list()  # 1 per block
    row, _ = control.summarise(episodes.head(3), ShortIntegrator(2))
    assert row["final_return_per_agent"] == -2.0 and row["steps_to_hold"] is None


def test_control_tables_give_the_median_and_range_over_seeds_in_method_order(
    tmp_path: Path,
) -> None:
    runs = pl.DataFrame(
        {
            "task": ["pendulum"] * 4,
            "agents": [2] * 4,
            "method": ["full", "full", "full", "independent"],
            "final_return_per_agent": [-100.0, -300.0, -200.0, -50.0],
            "held_share": [0.0, 0.5, 1.0, 0.0],
            "greedy_return_per_agent": [-1.0, -2.0, -3.0, -4.0],
            "greedy_held_share": [0.0, 0.0, 0.0, 0.0],
            "steps_to_hold": [None, 500, None, None],
            "steps_to_reach": [5, 10, 15, 20],
            "psi_plus_share": [0.8, 0.9, 1.0, 0.5],
            "steps_per_s": [1.0, 2.0, 3.0, 4.0],
            "audit_clean": [True, True, True, True],
            "greedy_audit_clean": [True, False, True, True],
        },
        schema_overrides={"steps_to_hold": pl.Int64},
    )
    reference = pl.DataFrame({"agents": [2], "return_per_agent": [-265.4],
                              "held_share": [1.0], "audit_clean": [True]})  # fmt: skip
    data = saved(tmp_path, "control", runs=runs.with_columns(seed=pl.Series([0, 1, 2, 0])),
                 reference=reference)  # fmt: skip
    table, central = (md_rows(t.markdown()) for t in control.tables(data))
    assert [r[1] for r in table] == ["method", "independent", "full"]
    # saved before runs recorded their episodes' order: no training figures of the last tenth
    assert table[2] == ["2", "full", "3", "-2 [-3, -1]", "0.00", "0.90 [0.80, 1.00]", "500",
                        "2 [1, 3]", "1", "False"]  # fmt: skip
    assert central[1] == ["2", "-265", "1.00", "True"]
    # a study saved after the end error was recorded shows it, for the central controller too
    ended = runs.with_columns(seed=pl.Series([0, 1, 2, 0]),
                              greedy_end_error=pl.Series([0.1, 0.2, 0.3, 0.04]),
                              episodes_in_order=pl.lit(True))  # fmt: skip
    later = saved(tmp_path, "control-later", runs=ended,
                  reference=reference.with_columns(end_error=pl.lit(0.018)))  # fmt: skip
    table, central = (md_rows(t.markdown()) for t in control.tables(later))
    assert table[0][5] == "greedy distance from the goal at the end"
    assert table[1][5] == "0.040" and table[2][5].startswith("0.200 [")
    assert table[0][6:8] == ["training return per agent (last 10%)", "training held"]
    assert table[2][6:8] == ["-200 [-300, -100]", "0.50 [0.00, 1.00]"]
    assert central[0][3] == "central controller: distance from the goal at the end"
    assert central[1] == ["2", "-265", "1.00", "0.018", "True"]
    mixed = ended.with_columns(episodes_in_order=pl.Series([True, True, None, True]))
    partly = saved(tmp_path, "mixed", runs=mixed, reference=reference)
    table = md_rows(control.tables(partly)[0].markdown())
    assert "training held" not in table[0]  # one run saved before: none of them shows it
    plant = runs.with_columns(seed=pl.Series([0, 1, 2, 0]), task=pl.lit("gym:Pendulum-v1"))
    plant = plant.with_columns(greedy_end_error=pl.lit(float("nan")))
    on_gym = saved(tmp_path, "control-gym", runs=plant, reference=reference.clear())
    (gym,) = (md_rows(t.markdown()) for t in control.tables(on_gym))  # no designed controller
    assert not any(w in h for h in gym[0] for w in ("held", "hold", "goal"))  # it has no band


# --- economy.py: solved, lineages, the table ------------------------------------------------


def test_economy_solves_when_90_of_the_last_200_episodes_reach_the_goal() -> None:
    """The rolling share is over a full window of 200 episodes; solved at the first episode
    where it reaches 0.9, at the env steps taken by then."""
    for failures, episode in ((20, 199), (21, 200)):
        rows: list[dict[str, Any]] = []
        for i in range(300):
            hit = i >= failures
            rows += [{"kind": "transform", "duration": 1.0}] * 4
            rows += [{"kind": "episode_end", "episode": i, "steps": 4,
                      "episode_return": credit(0.8 if hit else 0.0)}]  # fmt: skip
        frame = events(rows)
        success = economy._success(frame)
        assert success["rolling"][:199].null_count() == 199
        assert success["env_steps"][episode] == 4 * (episode + 1)
        assert economy.solved_at(success) == 4 * (episode + 1)
    assert economy.solved_at(success.head(150)) is None


def test_economy_largest_lineage_is_the_share_of_the_living_from_one_founder() -> None:
    lives = pl.DataFrame(
        {
            "event": ["born", "born", "born", "died"],
            "account": ["A.1", "A.2", "B.1", "C.0"],
            "parent": ["A.0", "A.1", "B.0", None],
        }
    )
    assert economy._largest_lineage(lives, ["A.1", "A.2", "B.1", "C.1"]) == 0.5
    assert economy._largest_lineage(lives, ["A.2"]) == 1.0
    assert economy._largest_lineage(lives, []) is None


def test_economy_table_cells(tmp_path: Path) -> None:
    """median [min, max] over the seeds with a value, the value alone when all agree, and
    '-' when no seed has one; an endowment arm also makes a row of the endowment ladder."""
    columns = ["solved_at", "success", "length", "extinct_at", "alive", "useless_alive",
               "r_share", "births", "deaths", "useless_deaths", "lineage", "gini",
               "top1"]  # fmt: skip
    data: dict[str, list[Any]] = {"arm": ["endowed"] * 3, "audit_clean": [True] * 3}
    data["seconds"] = [40.0, 50.0, 60.0]
    data |= {c: [1.0, 1.0, 1.0] for c in columns}
    data |= {"solved_at": [30_000, None, 10_000], "extinct_at": [None, None, None]}
    data["success"] = [1.0, 0.25, 0.5]
    runs = pl.DataFrame(data, schema_overrides={"solved_at": pl.Int64, "extinct_at": pl.Int64})
    table, ladder = economy.tables(saved(tmp_path, "economy", runs=runs))
    assert md_rows(ladder.markdown())[1:] == [["50 (`endowed`)", "2/3", "0/3", "20,000"]]
    (row,) = md_rows(table.markdown())[1:]
    assert row[:7] == ["endowed", "3", "2", "0", "20,000 [10,000, 30,000]", "0.50 [0.25, 1.00]",
                       "1.0"]  # fmt: skip
    assert row[7] == "-" and row[-2:] == ["50 [40, 60]", "True"]


def test_a_gymnasium_run_is_solved_when_its_last_100_episodes_average_the_threshold() -> None:
    """Episodes of returns 10 then 500 (scale 0.01: credit 0.1 and 5), one env step per
    transformation: the rolling mean of the last 100 first reaches 475 at the episode whose
    window holds 95 of the 500s, and the env steps are the transformations before it."""
    rows: list[dict[str, Any]] = []
    seq = 0
    for episode in range(200):
        length = 10 if episode < 100 else 500
        for _ in range(length):
            rows.append({"seq": seq, "kind": "transform", "duration": 1.0, "steps": None,
                         "episode_return": None})  # fmt: skip
            seq += 1
        rows.append({"seq": seq, "kind": "episode_end", "duration": None, "steps": length,
                     "episode_return": length * UNIT // 100})  # fmt: skip
        seq += 1
    episodes = gym_envs.episode_table(pl.DataFrame(rows).lazy(), 0.01)
    assert episodes["ret"].to_list()[:2] == [10.0, 10.0] and episodes["ret"][-1] == 500.0
    offset = gym_envs.episode_table(pl.DataFrame(rows).lazy(), 0.01, 1.0)  # a step's +1 undone
    assert offset["ret"].to_list()[:2] == [0.0, 0.0] and offset["ret"][-1] == 0.0
    # 5 tens and 95 five-hundreds: (50 + 47,500) / 100 = 475.5; 6 and 94 give 470.6
    at = 100 * 10 + 95 * 500
    assert gym_envs.solved_at(episodes, 475.0) == at
    assert gym_envs.solved_at(episodes, 501.0) is None


def test_a_gymnasium_study_draws_one_line_per_run_in_its_arms_colours(tmp_path: Path) -> None:
    """Curves of two arms, two seeds each, all at GYM_PPO's settings: one plot, a line per
    run, each coloured by its arm, and the solved threshold."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [
        {"env": "MiniGrid-DoorKey-5x5-v0", "arm": arm, "seed": seed, "env_steps": step,
         "rolling": 0.1 * step + seed}
        for arm in ("ccv", "monolithic") for seed in (0, 1) for step in (1, 2, 3)
    ]  # fmt: skip
    data = save_data(tmp_path, "doorkey", "gymnasium", {"curves": pl.DataFrame(rows)})
    drawn: list[list[str]] = []
    saved = Figure.savefig

    def keep_lines(fig: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append([line.get_color() for line in fig.axes[0].get_lines()])
        saved(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", keep_lines)
        gym_envs.plots(data, tmp_path / "img")
    assert (tmp_path / "img" / "doorkey.png").is_file()
    assert drawn == [["tab:blue"] * 2 + ["tab:orange"] * 2 + ["grey"]]


def _logged_square(x: int, log: Path) -> int:
    """x squared, each call logged (a run whose calls a test counts)."""
    with log.open("a") as f:
        f.write(f"{x}\n")
    return x * x


def test_a_kept_study_runs_only_the_jobs_not_yet_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, keep = tmp_path / "calls", tmp_path / "keep"
    first = pool.run_each(_logged_square, [(2, log), (3, log)], workers=1, keep=keep)
    assert sorted(first) == [4, 9]
    capsys.readouterr()
    again = pool.run_each(_logged_square, [(2, log), (3, log), (4, log)], workers=1, keep=keep)
    assert sorted(again) == [4, 9, 16]
    assert f"3/3 _logged_square: 4, {log}\n" in capsys.readouterr().out  # a line a run
    assert sorted(log.read_text().split()) == ["2", "3", "4"]  # 2 and 3 were read, not run
    assert len(list(keep.glob("*.pickle"))) == 3 and not list(keep.glob("*.partial"))
    pool.run_each(_logged_square, [(2, log)], workers=1)  # without keep: always run
    assert log.read_text().split().count("2") == 2


def test_a_gymnasium_table_shows_the_settings_only_where_its_runs_differ(tmp_path: Path) -> None:
    """Runs record the settings they ran over their arm's (`described`, as --ppo spells
    them); a table of one setting has no settings column, one of several groups by it."""
    assert gym_envs.described({}) == ""
    assert gym_envs.described({"ppo": {"entropy_coef": 0.0}, "reward_offset": 1.0}) == (
        "entropy_coef=0,reward_offset=1"
    )
    row = {"env": "Acrobot-v1", "arm": "ccv", "seed": 0, "solved_at": None,
           "solved_seconds": None, "final_return": -500.0, "steps_per_s": 1.0,
           "audit_clean": True}  # fmt: skip
    for name, settings in (("one", ["", ""]), ("two", ["", "epochs=8"])):
        data = tmp_path / name
        data.mkdir()
        runs = [row | {"seed": i, "settings": s} for i, s in enumerate(settings)]
        pl.DataFrame(runs).write_parquet(data / "runs.parquet")
        (table,) = gym_envs.tables(data)
        assert ("settings" in table.frame.columns) == (name == "two")
        assert table.frame.height == (1 if name == "one" else 2)


def test_a_gymnasium_table_gives_returns_in_0_to_1_to_three_decimals(tmp_path: Path) -> None:
    """DoorKey's returns lie in [0, 1], where one decimal would show 0.962 and 0.958 alike as
    1.0; envs with returns in the hundreds keep one decimal."""
    for env, final, shown in (
        ("MiniGrid-DoorKey-5x5-v0", 0.96173, "0.962"),
        ("CartPole-v1", 493.84, "493.8"),
    ):
        data = tmp_path / env
        data.mkdir()
        row = {"env": env, "arm": "monolithic", "seed": 0, "solved_at": 1, "solved_seconds": 1.0,
               "final_return": final, "steps_per_s": 1.0, "audit_clean": True}  # fmt: skip
        pl.DataFrame([row]).write_parquet(data / "runs.parquet")
        if env == "CartPole-v1":
            (tmp_path / "cleanrl.csv").write_text("steps_to_solve,steps_per_s,source\n1,1,x\n")
        table = gym_envs.tables(data)[0]
        assert table.frame["final return (last 100)"].to_list() == [shown]


def test_a_gymnasium_table_is_followed_by_the_returns_published_for_its_envs(
    tmp_path: Path,
) -> None:
    """Published returns (data/published.csv) are shown for the envs the runs hold, each
    with its source, and for no other env; without the file there is no such table."""
    data = tmp_path / "data" / "acrobot"
    data.mkdir(parents=True)
    row = {"env": "Acrobot-v1", "arm": "ccv", "seed": 0, "solved_at": None,
           "solved_seconds": None, "final_return": -500.0, "steps_per_s": 1.0,
           "audit_clean": True}  # fmt: skip
    pl.DataFrame([row]).write_parquet(data / "runs.parquet")
    assert [t.name for t in gym_envs.tables(data)] == ["acrobot"]
    (data.parent / "published.csv").write_text(
        "env,implementation,seeds,env_steps,return,spread,source\n"
        "CartPole-v1,X,3,500000,488.75,18.4,page a\n"
        "Acrobot-v1,X,3,500000,-82.48,5.93,page b\n"
    )
    _, published = gym_envs.tables(data)
    assert published.name == "acrobot-published"
    assert published.frame.rows() == [
        ("Acrobot-v1", "X (published)", "3", "500,000", "-82.48 ± 5.93", "page b")
    ]
