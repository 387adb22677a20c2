"""Mental Rotation: its affine functions, state ids, starts, rewards and classifier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from agents.fixed import make_bidder
from ledger.store import MemoryLedger
from market import digits
from market.audit import audit
from market.mental_rotation import (
    KINDS,
    NODES,
    PRIMITIVES,
    MentalRotation,
    decode,
    encode,
    grids,
    input_kind,
    primitive_maps,
    solution,
    turn,
    warp,
)
from market.run import KernelChoice, RunConfig, simulate
from market.society import Society
from market.tasks import make_task

NONE = -1
"""A step not taken, in `render`'s arguments."""


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache for this module: the classifier is trained in it once."""
    root = tmp_path_factory.mktemp("market-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MARKET_CACHE", str(root))
        digits.classifier()
        yield root


@pytest.fixture(scope="module")
def task() -> MentalRotation:
    """The test split's task (seed 0), shared by the tests that only read it."""
    return MentalRotation(seed=0, split="test")


def moved(images: torch.Tensor, *primitives: int) -> torch.Tensor:
    """`images` after each primitive in turn."""
    g = grids(primitive_maps())
    for p in primitives:
        images = warp(images, g[[p]].expand(len(images), -1, -1, -1))
    return images


def centred(task: MentalRotation) -> torch.Tensor:
    """The test split's digits on their canvases, untransformed."""
    return task.digits.images[task.digits.test]


def full(n: int, value: int) -> np.ndarray:
    """n copies of `value` as int64."""
    return np.full(n, value, dtype=np.int64)


def test_turns_undo_each_other_on_a_centred_digit(task: MentalRotation) -> None:
    """rotate+60 then rotate-60 gives back a centred digit up to interpolation blur."""
    x = centred(task)
    for a, b in ((0, 1), (1, 0)):
        y = moved(x, a, b)
        assert float((y - x).abs().mean()) < 0.01
        assert float(y.sum() / x.sum()) == pytest.approx(1.0, abs=0.01)


def test_opposite_shifts_undo_each_other(task: MentalRotation) -> None:
    """left then right, and up then down, give back a centred digit exactly."""
    x = centred(task)
    for a, b in ((2, 3), (3, 2), (4, 5), (5, 4)):
        torch.testing.assert_close(moved(x, a, b), x, atol=1e-5, rtol=0)


def test_a_shift_off_the_canvas_is_lost(task: MentalRotation) -> None:
    """Three shifts left push part of the digit off the canvas; shifting back cannot restore it."""
    x = centred(task)
    y = moved(x, 2, 2, 2, 3, 3, 3)
    assert float(y.sum()) < 0.9 * float(x.sum())


def test_a_shift_primitive_undoes_the_input_shift_exactly(task: MentalRotation) -> None:
    """For every kind, the opposite shift leaves exactly the turned digit, centred."""
    inputs = task.inputs
    back, _ = zip(*(solution(k) for k in range(len(KINDS))), strict=True)
    kind = inputs % len(KINDS)
    after = task.render(inputs, np.array(back)[kind], full(len(inputs), NONE))
    theta = np.stack([turn(60.0), turn(-60.0)])[kind // 4]
    turned = warp(task.digits.images[inputs // len(KINDS)], grids(theta))
    torch.testing.assert_close(after, turned, atol=1e-5, rtol=0)


def test_inputs_keep_the_whole_digit_on_the_canvas(task: MentalRotation) -> None:
    """Every input kind keeps the digit on the canvas: nothing is lost before the first step."""
    inputs = task.inputs
    given = task.render(inputs, full(len(inputs), NONE), full(len(inputs), NONE))
    source = task.digits.images[inputs // len(KINDS)]
    ratio = given.sum((1, 2, 3)) / source.sum((1, 2, 3))
    assert float(ratio.min()) > 0.99


def test_the_solution_restores_the_digit_and_the_wrong_order_does_not(
    task: MentalRotation,
) -> None:
    """Shift back then turn back: close to the canvas digit and read right (> 90% of test
    inputs); turning first: far off-centre and read right far less often (< 30%)."""
    inputs = task.inputs
    pairs = np.array([solution(k) for k in range(len(KINDS))])[inputs % len(KINDS)]
    source = task.digits.images[inputs // len(KINDS)]
    right = task.render(inputs, pairs[:, 0], pairs[:, 1])
    wrong = task.render(inputs, pairs[:, 1], pairs[:, 0])
    assert float((right - source).abs().mean()) < 0.01 < float((wrong - source).abs().mean())
    assert task.solved(inputs, pairs[:, 0], pairs[:, 1]).mean() > 0.9
    assert task.solved(inputs, pairs[:, 1], pairs[:, 0]).mean() < 0.3


def test_solution_names_the_inverse_functions() -> None:
    """Kind 'rotate+60 left' is undone by right then rotate-60, and so on for all 8."""
    for kind, name in enumerate(KINDS):
        turned, shifted = name.split()
        back, unturn = (PRIMITIVES[p] for p in solution(kind))
        assert {shifted, back} in ({"left", "right"}, {"up", "down"})
        assert {turned, unturn} == {"rotate+60", "rotate-60"}


def test_state_ids_round_trip(task: MentalRotation) -> None:
    """decode then encode gives every state id back; node 0, 1 + p, 7 + 6 p1 + p2."""
    states = np.arange(5 * NODES, dtype=np.int64) + 1000 * NODES
    inputs, first, second = decode(states)
    np.testing.assert_array_equal(encode(inputs, first, second), states)
    assert (first[0], second[0]) == (NONE, NONE)
    assert (first[1 + 4], second[1 + 4]) == (4, NONE)
    assert (first[7 + 6 * 3 + 5], second[7 + 6 * 3 + 5]) == (3, 5)
    np.testing.assert_array_equal(input_kind(states), inputs % len(KINDS))
    assert task.n_states == len(task.digits.labels) * len(KINDS) * NODES


def test_starts_are_deterministic_and_independent_of_batching() -> None:
    """Episode e starts in the same state whatever order and batch sizes ask for it."""
    episodes = np.arange(10_000, dtype=np.int64)
    at_once = MentalRotation(seed=3).starts(episodes)
    piecewise = MentalRotation(seed=3)
    order = np.random.default_rng(0).permutation(episodes)
    got = np.empty_like(at_once)
    for chunk in np.array_split(order, [1, 8, 9, 200, 5000]):
        got[chunk] = piecewise.starts(chunk)
    np.testing.assert_array_equal(got, at_once)
    assert not np.array_equal(MentalRotation(seed=4).starts(episodes), at_once)


def test_starts_are_node_zero_of_the_split_inputs(task: MentalRotation) -> None:
    """Starts are inputs as given (node 0), drawn from the split's digits only."""
    starts = task.starts(np.arange(5000, dtype=np.int64))
    assert (starts % NODES == 0).all()
    digit = starts // NODES // len(KINDS)
    assert np.isin(digit, task.digits.test).all()
    assert len(np.unique(input_kind(starts))) == len(KINDS)


def test_transition_equals_step(task: MentalRotation) -> None:
    """transition over a batch equals step pair by pair, at every depth (fresh memo each)."""
    rng = np.random.default_rng(1)
    states = task.starts(np.arange(60, dtype=np.int64)) + rng.integers(0, NODES, 60)
    primitives = rng.integers(0, len(PRIMITIVES), 60)
    batch = MentalRotation(seed=0, split="test").transition(states, primitives)
    single = MentalRotation(seed=0, split="test")
    for i, (s, p) in enumerate(zip(states, primitives, strict=True)):
        out = single.step(int(s), int(p))
        assert out == (batch.next_state[i], batch.reward[i], batch.done[i], batch.duration[i])


def test_reward_and_done_only_at_depth_two(task: MentalRotation) -> None:
    """The first step pays 0 and goes on; the second pays 0 or 1 and ends; nothing after."""
    start = int(task.starts(np.array([0]))[0])
    kind = int(input_kind(np.array([start]))[0])
    first, second = solution(kind)
    one = task.step(start, first)
    assert (one.next_state, one.reward, one.done) == (start + 1 + first, 0.0, False)
    two = task.step(one.next_state, second)
    assert two.next_state == start + 7 + 6 * first + second
    assert two.done and two.reward in (0.0, 1.0)
    assert two.reward == task.oracle_reward(start // NODES, first, second)
    assert task.step(two.next_state, 0) == (two.next_state, 0.0, True, 1.0)


def test_observe_gives_float32_images(task: MentalRotation) -> None:
    """observe is (n, 1, 40, 40) float32 in [0, 1], node 0 the input as given."""
    states = task.starts(np.arange(7, dtype=np.int64)) + np.array([0, 1, 6, 7, 20, 42, 0])
    seen = task.observe(states)
    assert seen.shape == (7, *task.observation_shape) == (7, 1, 40, 40)
    assert seen.dtype == np.float32
    assert seen.min() >= 0.0 and seen.max() <= 1.0 + 1e-6
    given = task.render(decode(states[:1])[0], full(1, NONE), full(1, NONE))
    np.testing.assert_array_equal(seen[:1], given.numpy())


def test_classifier_is_accurate_and_kept_with_its_accuracy(cache: Path) -> None:
    """The classifier reads > 95% of the untransformed test digits; the cache keeps it."""
    trained = digits.classifier()
    assert trained.accuracy > 0.95
    assert digits.classifier_accuracy() == trained.accuracy
    path = digits.cache_path()
    assert path.parent == cache and path.exists() and f"-v{digits.VERSION}-" in path.name
    d = digits.load_digits()
    again = digits.accuracy(trained.model, d.images[d.test], d.labels[d.test])
    assert again == trained.accuracy


def test_logits_do_not_depend_on_the_batch(task: MentalRotation) -> None:
    """An image's logits are bit for bit the same alone as among others."""
    x = centred(task)[:100]
    model = task.trained.model
    together = digits.logits(model, x)
    for i in (0, 63, 64, 99):
        assert torch.equal(digits.logits(model, x[i : i + 1])[0], together[i])


def test_split_is_fixed_and_stratified() -> None:
    """Train and test split every class about 80/20, disjointly, the same every time."""
    d = digits.load_digits()
    train, test = digits.stratified_split(d.labels)
    np.testing.assert_array_equal(train, d.train)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(d.labels)
    share = np.bincount(d.labels[test]) / np.bincount(d.labels)
    np.testing.assert_allclose(share, 0.2, atol=0.01)


def test_the_task_is_not_tabular(task: MentalRotation) -> None:
    """tables and q_star refuse: there are far too many states."""
    with pytest.raises(ValueError, match="too many"):
        task.tables()
    with pytest.raises(ValueError, match="no Q"):
        task.q_star(0.99)


def test_registry_makes_both_splits() -> None:
    """make_task knows mental-rotation (train digits) and mental-rotation-test."""
    train, test = make_task("mental-rotation"), make_task("mental-rotation-test")
    assert isinstance(train, MentalRotation) and isinstance(test, MentalRotation)
    assert (train.name, test.name) == ("mental-rotation", "mental-rotation-test")
    assert (train.split, test.split, train.n_states) == ("train", "test", test.n_states)


@pytest.mark.parametrize("mechanism", ["ccv", "v"])
def test_smoke_both_kernels_write_the_same_audited_ledger(mechanism: str) -> None:
    """A tiny budget of random-bidder episodes: identical ledgers from both kernels, audited."""
    config = RunConfig(
        task="mental-rotation", mechanism=mechanism, bidder="random", episodes=20, concurrency=4
    )
    task = make_task(config.task)
    frames = []
    kernels: tuple[KernelChoice, ...] = ("episodes", "rounds")
    for kernel in kernels:
        society = Society.of(task, config.cloned)
        policy = make_bidder("random", task, society, config.gamma, np.random.default_rng(7))
        ledger = MemoryLedger()
        simulate(config, ledger, policy, kernel=kernel, task=task)
        assert audit(ledger).ok
        frames.append(ledger.scan().collect())
    assert frames[0].equals(frames[1])
    rewards = frames[0].filter(pl.col("kind") == "reward")
    assert rewards.height == 2 * 20 and rewards.filter(pl.col("amount") > 0).height > 0
