"""The audit re-derives the world (`market.rederive`): each world rule, on a real ledger with one
stored fact falsified, names that rule at that seq; what is not re-derived is reported.

The falsifications that matter most are made where an auditor meets them: in the stored
segments of a disk ledger, re-encoded as valid Arrow IPC, with every digest and link of the
chain recomputed (`test_cli.rechain`), so that only the rules can catch them. Frame-level
tests (`test_audit.falsify`) cover the other tasks. Every audit reads its ledger 50 events
at a time, so each expected verdict also checks what the rules carry between chunks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pytest
from conftest import ACCOUNTS, Tx, append_all, fold, head, history, next_seq
from test_audit import falsify, first_seq, rule_broken
from test_cli import rechain

from agents.fixed import make_bidder
from agents.fixed_control import RandomPolicy
from ledger.disk import DiskLedger
from ledger.events import Balance, RunEnd
from ledger.store import Ledger, MemoryLedger
from market import rederive
from market.audit import audit, audit_frame
from market.control import ControlRunConfig, simulate_control
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import START_DRAWS, Task, make_task, start_draws

pytestmark = pytest.mark.usefixtures("small_chunks")

BATCH = 200
"""Events per stored segment: a run spans many segments, and chunks."""
L = TypeVar("L", bound=Ledger)


def run_into(ledger: L, made: Task | None = None, **settings: Any) -> L:
    """A random-bidder auction run (`settings` over a small Chain run) into `ledger`, of the
    task `made` if given (else the one the settings name)."""
    config = RunConfig.model_validate(
        {"task": "chain", "bidder": "random", "episodes": 12, "concurrency": 4, "seed": 3}
        | settings
    )
    task = made or make_task(config.task, config.seed, config.gamma, config.primitives)
    policy = make_bidder(
        "random", task, Society.of(task, config.cloned), config.gamma, np.random.default_rng(3)
    )
    simulate(config, ledger, policy, task=task)
    return ledger


def frame_of(ledger: Ledger) -> pl.DataFrame:
    return ledger.scan().collect()


# --- falsified on disk --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Vickrey Chain run of four concurrent episodes on disk (the round kernel), shared."""
    run = tmp_path_factory.mktemp("stored") / "chain"
    ledger = DiskLedger(run / "ledger", batch_events=BATCH)
    run_into(ledger, mechanism="v")
    ledger.close()
    return run


@pytest.fixture
def run(tmp_path: Path, stored: Path) -> Path:
    """A private copy of the stored run."""
    return Path(shutil.copytree(stored, tmp_path / "chain"))


def events(run: Path) -> pl.DataFrame:
    return DiskLedger(run / "ledger").scan().collect()


def edit(run: Path, where: pl.Expr, **values: Any) -> list[int]:
    """Give the stored events matching `where` other field values (each segment re-encoded
    as valid Arrow IPC, its schema kept), then rebuild the chain over the new bytes; the
    seqs edited."""
    edited: list[int] = []
    for segment in sorted((run / "ledger").glob("seg-*.arrow")):
        table = ipc.open_file(pa.BufferReader(segment.read_bytes())).read_all()
        frame = pl.DataFrame(pl.from_arrow(table))
        mask = frame.select(where.fill_null(False)).to_series()
        if not mask.any():
            continue
        edited += frame.filter(mask)["seq"].to_list()
        chosen = pa.array(mask.to_numpy())
        for name, value in values.items():
            at = table.schema.get_field_index(name)
            kind = table.schema.field(at)
            column = pc.if_else(chosen, pa.scalar(value, kind.type), table.column(name))
            table = table.set_column(at, kind, column)
        sink = pa.BufferOutputStream()
        options = ipc.IpcWriteOptions(compression="lz4")
        with ipc.new_file(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        segment.write_bytes(sink.getvalue().to_pybytes())
    rechain(run)
    return edited


def verdict(run: Path) -> tuple[str, int]:
    """(rule, seq) of the first violation the audit of the stored ledger finds (its chain
    intact: no head kept elsewhere is given)."""
    report = audit(DiskLedger(run / "ledger"))
    assert report.violation is not None
    return report.violation.rule, report.violation.seq


def seq_of(run: Path, kind: str, where: pl.Expr | None = None) -> int:
    return first_seq(events(run), kind, where)


def test_the_stored_run_audits_clean_with_every_rule_re_derived(run: Path) -> None:
    """The unfalsified run breaks no rule, and nothing is left un-derived."""
    report = audit(DiskLedger(run / "ledger"))
    assert report.ok, report.violation
    assert report.not_rederived == {}
    assert len(list((run / "ledger").glob("seg-*.arrow"))) > 5


@pytest.mark.parametrize(("field", "change"), [
    ("next_state", lambda v: v + 1), ("state", lambda v: v + 1),
    ("primitive", lambda v: 1 - v), ("done", lambda v: not v),
])  # fmt: skip
def test_a_transformation_the_task_did_not_make_breaks_transition(
    run: Path, field: str, change: Any
) -> None:
    """A Transform's next state, the state it starts from, the primitive that made it, and
    whether it ended the episode are the task's (Chain's table), the auction's and where
    the episode stood."""
    seq = seq_of(run, "transform", pl.col("step") == 2)
    told = events(run).filter(pl.col("seq") == seq)[field][0]
    assert edit(run, pl.col("seq") == seq, **{field: change(told)}) == [seq]
    assert verdict(run) == ("transition", seq)


def test_a_reward_the_task_did_not_pay_breaks_reward_value(run: Path) -> None:
    """A Reward is the task's for the transformation, in units: one unit more is caught at
    the reward, before the episode's return and the closing balances that it also breaks."""
    seq = seq_of(run, "reward", pl.col("step") == 1)
    amount = int(events(run).filter(pl.col("seq") == seq)["amount"][0])
    edit(run, pl.col("seq") == seq, amount=amount + 1)
    assert verdict(run) == ("reward-value", seq)


def test_a_transformation_taking_another_time_breaks_duration(run: Path) -> None:
    """A Transform takes the task's duration (a Chain move: 1)."""
    seq = seq_of(run, "transform", pl.col("step") == 1)
    edit(run, pl.col("seq") == seq, duration=2.0)
    assert verdict(run) == ("duration", seq)


def test_an_episode_started_elsewhere_breaks_episode_start(run: Path) -> None:
    """An EpisodeStart's state is the task's start (Chain's 0), caught at the start, before
    the first auction that transforms it."""
    seq = seq_of(run, "episode_start", pl.col("episode") == 5)
    edit(run, pl.col("seq") == seq, state=3)
    assert verdict(run) == ("episode-start", seq)


def test_an_episode_start_naming_another_mechanism_breaks_episode_start(run: Path) -> None:
    """An EpisodeStart names its run's mechanism (the price rules read it)."""
    seq = seq_of(run, "episode_start", pl.col("episode") == 5)
    edit(run, pl.col("seq") == seq, mechanism="bb")
    assert verdict(run) == ("episode-start", seq)


def test_a_run_start_with_another_seed_breaks_run_start(run: Path) -> None:
    """A RunStart's seed is its configuration's (starts and learners are drawn from it)."""
    edit(run, pl.col("kind") == "run_start", seed=4)
    assert verdict(run) == ("run-start", 0)


def test_a_run_ending_fewer_episodes_than_its_budget_breaks_run_end(run: Path) -> None:
    """A run of a budget of episodes alone ends exactly that many: a configuration that
    says 13 is caught at the RunEnd, which counts 12."""
    config = events(run).filter(pl.col("kind") == "run_start")["config"][0]
    assert '"episodes":12,' in config
    more = config.replace('"episodes":12,', '"episodes":13,')
    edit(run, pl.col("kind") == "run_start", config=more)
    assert verdict(run) == ("run-end", seq_of(run, "run_end"))


def test_episodes_open_beyond_the_concurrency_break_episode_order(run: Path) -> None:
    """No more episodes are open at once than the run's concurrency: with 4 interleaved
    episodes under a configuration of 1, the second episode's start is caught."""
    config = events(run).filter(pl.col("kind") == "run_start")["config"][0]
    assert '"concurrency":4' in config
    one = config.replace('"concurrency":4', '"concurrency":1')
    edit(run, pl.col("kind") == "run_start", config=one)
    second = seq_of(run, "episode_start", pl.col("episode") == 1)
    assert verdict(run) == ("episode-order", second)


def test_an_episode_numbered_out_of_start_order_breaks_episode_order(tmp_path: Path) -> None:
    """Episodes are numbered in the order they start: one episode renumbered, every event
    of it, to a number above the next one's is caught at the next one's start."""
    run = tmp_path / "one"
    ledger = DiskLedger(run / "ledger", batch_events=BATCH)
    run_into(ledger, concurrency=1)
    ledger.close()
    assert audit(DiskLedger(run / "ledger")).ok
    edit(run, pl.col("episode") == 4, episode=40)
    after = seq_of(run, "episode_start", pl.col("episode") == 5)
    assert verdict(run) == ("episode-order", after)


def test_a_reward_turned_into_a_penalty_breaks_reward_value(tmp_path: Path) -> None:
    """Direction carries a reward's sign: Duality's 0.5 recorded as paid to the environment
    keeps the money between the environment and the winner, but not the task's sign."""
    run = tmp_path / "duality"
    ledger = DiskLedger(run / "ledger", batch_events=BATCH)
    run_into(ledger, task="duality")
    ledger.close()
    frame = events(run)
    reward = frame.filter((pl.col("kind") == "reward") & (pl.col("src") == "environment"))
    seq, winner = reward["seq"][0], reward["dst"][0]
    edit(run, pl.col("seq") == seq, src=winner, dst="environment")
    assert verdict(run) == ("reward-value", seq)


def test_an_episode_end_miscounting_its_auctions_breaks_episode_end(run: Path) -> None:
    """`EpisodeEnd.steps` is audited by the `episode-end` rule: its episode's auctions."""
    seq = seq_of(run, "episode_end", pl.col("steps") > 2)
    steps = int(events(run).filter(pl.col("seq") == seq)["steps"][0])
    edit(run, pl.col("seq") == seq, steps=steps - 1)
    assert verdict(run) == ("episode-end", seq)


# --- every episode ended, hand-made ---------------------------------------------------------------


def test_a_run_ending_with_an_episode_open_breaks_run_end() -> None:
    """Every episode a run started has ended by its RunEnd (the hand-made history's episode,
    its EpisodeEnd left out and the RunEnd counting none)."""
    txs: list[Tx] = history()[:-2]
    h = head(next_seq(txs), next_seq(txs), step=-1)
    balances = fold(txs)
    txs.append([
        RunEnd(**h, episodes=0),
        *(Balance(**{**h, "seq": h["seq"] + 1 + i}, account=a, amount=balances.get(a, 0))
          for i, a in enumerate(ACCOUNTS)),
    ])  # fmt: skip
    ledger = MemoryLedger()
    append_all(ledger, txs)
    assert rule_broken(frame_of(ledger)) == ("run-end", h["seq"])


# --- what is not re-derived is said ------------------------------------------------------------


def test_a_hand_made_run_says_no_world_was_re_derived() -> None:
    """A RunStart whose configuration the engine did not write names no task: the world's
    rules are reported as not re-derived (the ledger is otherwise clean)."""
    ledger = MemoryLedger()
    append_all(ledger, history())
    report = audit_frame(frame_of(ledger))
    assert report.ok, report.violation
    assert {"transition", "reward-value", "duration", "episode-start"} <= set(report.not_rederived)
    assert "no configuration this engine writes" in report.not_rederived["transition"]


def test_a_task_given_to_simulate_is_said_not_re_derived() -> None:
    """A task passed to `simulate` in place of the one its configuration names (a scripted
    corridor under a Chain configuration) is reported, not re-derived as Chain."""
    from test_options import Corridor

    ledger = run_into(MemoryLedger(), made=Corridor(), episodes=4)
    report = audit_frame(frame_of(ledger))
    assert report.ok, report.violation
    assert "'corridor'" in report.not_rederived["transition"]


# --- the other tasks -----------------------------------------------------------------------------


def control_frame(concurrency: int) -> pl.DataFrame:
    config = ControlRunConfig(
        task="pendulum", agents=3, policy="random", episodes=3, concurrency=concurrency, seed=2
    )
    ledger = MemoryLedger()
    simulate_control(config, ledger, RandomPolicy(5, 3, np.random.default_rng(0)))
    return frame_of(ledger)


@pytest.fixture(scope="module")
def control() -> pl.DataFrame:
    return control_frame(2)


def test_control_runs_re_derive_to_the_bit_at_any_concurrency(control: pl.DataFrame) -> None:
    """f and g recomputed from the stored x and controls give the stored next x and rewards
    exactly, however many episodes the kernel stepped at once."""
    for frame in (control, control_frame(1), control_frame(3)):
        report = audit_frame(frame)
        assert report.ok and report.not_rederived == {}, report.violation


def test_a_control_step_off_by_an_ulp_breaks_transition(control: pl.DataFrame) -> None:
    """A next state is f(x, u) to the bit."""
    seq = first_seq(control, "transition", pl.col("step") == 5)
    theta, omega = control.filter(pl.col("seq") == seq)["next_x"][0].to_list()
    moved = falsify(control, seq, next_x=[float(np.nextafter(theta, 4.0)), omega])
    assert rule_broken(moved) == ("transition", seq)


def test_a_control_episode_started_elsewhere_breaks_transition(control: pl.DataFrame) -> None:
    """Each episode starts at the state drawn for it from the run's seed."""
    seq = first_seq(control, "transition", (pl.col("step") == 0) & (pl.col("episode") == 2))
    theta, omega = control.filter(pl.col("seq") == seq)["x"][0].to_list()
    assert rule_broken(falsify(control, seq, x=[theta, omega + 1e-9])) == ("transition", seq)


def test_an_order_the_step_did_not_apply_breaks_transition(control: pl.DataFrame) -> None:
    """An order's control is its action's, and the one the step applied for its agent."""
    seq = first_seq(control, "order", pl.col("step") == 7)
    action = int(control.filter(pl.col("seq") == seq)["action"][0])
    assert rule_broken(falsify(control, seq, action=(action + 1) % 5)) == ("transition", seq)


def test_a_control_reward_off_by_a_unit_breaks_reward_value(control: pl.DataFrame) -> None:
    """Each agent's reward is its own g_i(x, u), in units."""
    seq = first_seq(control, "reward", pl.col("step") == 9)
    amount = int(control.filter(pl.col("seq") == seq)["amount"][0])
    assert rule_broken(falsify(control, seq, amount=amount + 1)) == ("reward-value", seq)


@pytest.fixture(scope="module")
def rotation() -> pl.DataFrame:
    task = make_task("mental-rotation", seed=3)
    return frame_of(run_into(MemoryLedger(), task, task="mental-rotation", episodes=16, seed=3))


def test_mental_rotation_re_derives_moves_and_starts_not_the_classifier(
    rotation: pl.DataFrame,
) -> None:
    """Moves and starts are re-derived (arithmetic on ids, draws from the seed); the second
    step's reward, the classifier's reading, is said not to be."""
    report = audit_frame(rotation)
    assert report.ok, report.violation
    assert list(report.not_rederived) == ["reward-value"]
    assert "classifier" in report.not_rederived["reward-value"]
    step = first_seq(rotation, "transform", pl.col("step") == 1)
    assert rule_broken(falsify(rotation, step, next_state=5)) == ("transition", step)
    start = first_seq(rotation, "episode_start", pl.col("episode") == 7)
    assert rule_broken(falsify(rotation, start, state=43)) == ("episode-start", start)
    paid = first_seq(rotation, "reward", pl.col("step") == 1)
    assert rule_broken(falsify(rotation, paid, amount=5)) == ("reward-value", paid)


@pytest.fixture(scope="module")
def rooms() -> pl.DataFrame:
    """A Two Rooms run with the shortest-path options of tests/test_two_rooms.py."""
    from test_two_rooms import GAMMA, scripted

    task = scripted(seed=2)
    ledger = run_into(MemoryLedger(), task, task="tworooms", episodes=30, seed=2, gamma=GAMMA)
    return frame_of(ledger)


def test_two_rooms_re_derives_durations_and_rewards_from_the_ids(rooms: pl.DataFrame) -> None:
    """An option's duration is the env steps its ids count, its reward the goal's decayed
    pay discounted to its length; where it went is the options' choice, said not to be
    re-derived but checked to be where the option stops."""
    report = audit_frame(rooms)
    assert report.ok, report.violation
    assert list(report.not_rederived) == ["transition"]
    paid = rooms.filter((pl.col("kind") == "reward") & (pl.col("amount") > 0))
    assert paid.height > 0
    seq, amount = paid["seq"][0], paid["amount"][0]
    assert rule_broken(falsify(rooms, seq, amount=amount - 1)) == ("reward-value", seq)
    step = first_seq(rooms, "transform", pl.col("step") == 1)
    assert rule_broken(falsify(rooms, step, duration=31.0)) == ("duration", step)
    start = int(rooms.filter(pl.col("seq") == step)["state"][0])
    assert rule_broken(falsify(rooms, step, next_state=start)) == ("transition", step)


def test_two_rooms_durations_and_rewards_read_off_the_ids_are_the_tasks() -> None:
    """For options from anywhere (room 1, room 2, late in the episode, where they time
    out), the duration, reward and stop the audit reads off the ids are what running the
    options gives."""
    from test_two_rooms import scripted

    from market import two_rooms as rooms

    task = scripted(seed=0)
    rng = np.random.default_rng(0)
    places = np.concatenate([rooms.room1_states(), rooms.option_starts(1), rooms.option_starts(0)])
    cells = rooms.decode(rng.choice(places, 400))
    late = rng.choice([0, 0, 60, 85, 95, 99], 400)
    states = rooms.state_ids(cells.x, cells.y, cells.direction, cells.door, late)
    options = rng.integers(0, 3, 400)
    moved = task.transition(states, options)
    steps = rooms.decode(moved.next_state).t - late
    assert np.array_equal(steps, moved.duration)
    assert np.array_equal(rooms.option_reward(moved.next_state, steps, "green", task.gamma),
                          moved.reward)  # fmt: skip
    assert rooms.option_stopped(states, options, moved.next_state).all()
    assert np.array_equal(rooms.episode_over(moved.next_state), moved.done)
    assert (moved.reward > 0).any() and moved.done.any()


def test_what_is_not_re_derived_does_not_depend_on_the_chunking(rotation: pl.DataFrame) -> None:
    """The report's list of rules not re-derived is the same at any chunk size."""
    said = {
        str(audit_frame(rotation, chunk_events=size).not_rederived) for size in (13, 200, 10**9)
    }
    assert len(said) == 1


# --- the pieces ----------------------------------------------------------------------------------


def test_start_draws_are_the_tasks_and_the_audit_keeps_one_chunk_of_them() -> None:
    """The audit's draws of starts are the tasks' (one generator, drawn START_DRAWS at a
    time), for episodes asked for in increasing order across chunk boundaries and after a
    jump, keeping only the draws the latest request needs."""
    rng = np.random.default_rng(9)
    expected = np.concatenate([rng.integers(0, 100, size=START_DRAWS) for _ in range(4)])
    source = start_draws(9, 100)
    assert np.array_equal(np.concatenate([next(source) for _ in range(4)]), expected)
    draws = rederive._Draws(9, 100)
    for block in (np.arange(0, 10), np.arange(4090, 4100), np.arange(12000, 12010)):
        assert np.array_equal(draws.of(block), expected[block])
        assert len(draws._kept) <= 2 * START_DRAWS


def test_the_world_carried_between_chunks_is_the_open_episodes(
    stored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between chunks the world's rules carry each open episode's state: never more than
    the run's concurrency of them, however finely the ledger is chunked."""
    carried: list[int] = []
    check = rederive.check

    def spy(parts: rederive.Parts, carry: rederive.Carry) -> rederive.Finding | None:
        found = check(parts, carry)
        carried.append(carry.states.height)
        return found

    monkeypatch.setattr(rederive, "check", spy)
    for size in (7, 37):
        carried.clear()
        assert audit(DiskLedger(stored / "ledger"), chunk_events=size).ok
        assert 0 < max(carried) <= 4 and carried[-1] == 0
