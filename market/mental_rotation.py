"""Mental Rotation (Chang et al. 2020): undo a digit's turn and shift in two steps.

An input is a canvas digit (`market.digits`) turned by +-ANGLE degrees about the canvas
centre, THEN shifted SHIFT pixels left, right, up or down: 8 input kinds. The six primitives
are fixed affine functions (turn +-ANGLE about the canvas centre, shift SHIFT pixels each
way), each applied by a grid_sample of its own, so what a step pushes off the canvas is lost.
Two steps; the reward is 1 if the fixed classifier reads the final image as the digit's
label. Kind (turn a, shift d) is undone by shifting back, then turning back; turning first
swings the off-centre digit about the canvas centre and leaves it SHIFT pixels off-centre.

State ids: `input * 43 + node` with input = digit * 8 + kind over all 1797 digits (so an id
means the same under both splits); node 0 is the input as given, 1 + p the input after
primitive p, 7 + 6 * p1 + p2 after p1 then p2. Images: y points down; a positive turn is
counter-clockwise on screen.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from market.digits import CANVAS, Digits, Trained, classifier, load_digits, predict
from market.tasks import MENTAL_ROTATION, START_DRAWS, Outcome, Task, TaskTables, start_draws

ANGLE = 60.0
"""Degrees of every turn, input and primitive."""
SHIFT = 8
"""Pixels of every shift: whole pixels, so a shift back restores the image exactly."""
PRIMITIVES = ("rotate+60", "rotate-60", "left", "right", "up", "down")
"""The six primitives, in id order."""
DIRECTIONS = ("left", "right", "up", "down")
"""The shifts, in the order of primitives 2..5 and of the input kinds."""
KINDS = tuple(f"rotate{a} {d}" for a in ("+60", "-60") for d in DIRECTIONS)
"""Input kinds, kind = 4 * turn + direction (turn 0 is +60): turned, then shifted."""
NODES = 43
"""States per input: the input itself, 6 after one step, 36 after two."""
START_CHUNK = START_DRAWS
"""Starts are drawn from the seed's generator this many at a time, always in this size."""

_UNIT = 2.0 / CANVAS
"""One pixel in affine_grid's normalised coordinates (align_corners=False)."""
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def turn(degrees: float) -> NDArray[np.float64]:
    """The 3x3 map moving content `degrees` counter-clockwise (on screen) about the centre."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def shift(direction: str, pixels: float = SHIFT) -> NDArray[np.float64]:
    """The 3x3 map moving content `pixels` toward `direction`."""
    dx, dy = _STEPS[direction]
    return np.array([[1.0, 0.0, dx * pixels * _UNIT], [0.0, 1.0, dy * pixels * _UNIT], [0, 0, 1]])


def primitive_maps() -> NDArray[np.float64]:
    """The six primitives' content maps (6, 3, 3), in PRIMITIVES order."""
    return np.stack([turn(ANGLE), turn(-ANGLE), *(shift(d) for d in DIRECTIONS)])


def kind_maps() -> NDArray[np.float64]:
    """The eight input kinds' content maps (8, 3, 3), turn then shift, in KINDS order."""
    return np.stack([shift(d) @ turn(a) for a in (ANGLE, -ANGLE) for d in DIRECTIONS])


def grids(maps: NDArray[np.float64]) -> Tensor:
    """affine_grid's sampling grids (n, CANVAS, CANVAS, 2) of content maps (n, 3, 3): each
    output pixel samples the input where the map's inverse sends it."""
    theta = torch.as_tensor(np.linalg.inv(maps)[:, :2], dtype=torch.float32)
    return F.affine_grid(theta, [len(maps), 1, CANVAS, CANVAS], align_corners=False)


def warp(images: Tensor, grid: Tensor) -> Tensor:
    """Each image (n, 1, CANVAS, CANVAS) resampled on its grid; what leaves the canvas is lost."""
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def solution(kind: int) -> tuple[int, int]:
    """The two primitives that undo input kind `kind`: shift back, then turn back."""
    turned, direction = divmod(kind, 4)
    return 2 + (direction ^ 1), 1 - turned  # left<->right, up<->down; +60 <-> -60


def input_kind(states: NDArray[np.int64]) -> NDArray[np.int64]:
    """Which of the 8 input kinds (KINDS) each state's input is."""
    return (np.asarray(states, dtype=np.int64) // NODES) % len(KINDS)


def decode(states: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
    """(input, first primitive, second primitive) of each state id; -1 for a step not taken."""
    inputs, node = np.divmod(np.asarray(states, dtype=np.int64), NODES)
    first = np.where(node >= 7, (node - 7) // 6, node - 1)
    second = np.where(node >= 7, (node - 7) % 6, -1)
    return inputs, first, second


def encode(
    inputs: NDArray[np.int64], first: NDArray[np.int64], second: NDArray[np.int64]
) -> NDArray[np.int64]:
    """The state id of each (input, first, second); -1 marks a step not taken."""
    node = np.where(first < 0, 0, np.where(second < 0, 1 + first, 7 + 6 * first + second))
    return np.asarray(inputs, dtype=np.int64) * NODES + node


def moves(
    states: NDArray[np.int64], primitives: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.bool_]]:
    """Where each primitive takes each state id (ids and primitives in range), whether that
    ends the episode, and whether it is the second step (the one the classifier pays for):
    arithmetic on ids, no image. After two steps nothing more happens."""
    inputs, node = np.divmod(states, NODES)
    fresh, finishing = node == 0, (node >= 1) & (node <= 6)
    nxt = np.where(fresh, states + 1 + primitives, states)
    nxt[finishing] = (inputs * NODES + 7 + 6 * (node - 1) + primitives)[finishing]
    return nxt, ~fresh, finishing


def split_inputs(digits: Digits, split: str) -> NDArray[np.int64]:
    """The input indices of `split`'s digits (every kind of each): what episodes start from."""
    chosen = digits.train if split == "train" else digits.test
    return (chosen[:, None] * len(KINDS) + np.arange(len(KINDS))).ravel()


class MentalRotation(Task):
    """Mental Rotation over the `split`'s digits: every episode is two steps from an input,
    and pays 1 exactly when the classifier reads its final image as the digit's label."""

    primitive_names = PRIMITIVES
    horizon = 2
    tabular = False
    observation_shape = (1, CANVAS, CANVAS)

    def __init__(self, seed: int = 0, split: str = "train") -> None:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
        self.name = next(name for name, of in MENTAL_ROTATION.items() if of == split)
        self.seed, self.split = seed, split
        self.digits = load_digits()
        self.trained: Trained = classifier()
        self.n_inputs = len(self.digits.labels) * len(KINDS)
        self.n_states = self.n_inputs * NODES
        self.inputs = split_inputs(self.digits, split)
        """The split's input indices: what `starts` draws from."""
        self._drawing = start_draws(seed, len(self.inputs), START_CHUNK)
        self._draws = np.empty(0, dtype=np.int64)
        self._read = np.full(self.n_inputs * 36, -1, dtype=np.int8)
        """Memo by input * 36 + 6 * p1 + p2: is the final image read right? (-1: not yet known)"""
        # The 14 maps are fixed: their affine_grids are made once, not per image.
        self._kind_grids = grids(kind_maps())
        self._primitive_grids = grids(primitive_maps())

    def tables(self) -> TaskTables:
        """Not available: there are too many states to tabulate."""
        raise ValueError(f"task {self.name!r} has {self.n_states} states: too many to tabulate")

    def starts(self, episodes: NDArray[np.int64]) -> NDArray[np.int64]:
        """The node-0 state of the split input drawn for each episode (seed, episode number)."""
        episodes = np.asarray(episodes, dtype=np.int64)
        while len(self._draws) <= episodes.max(initial=-1):  # same draws in any request order
            self._draws = np.concatenate([self._draws, next(self._drawing)])
        return self.inputs[self._draws[episodes]] * NODES

    def step(self, state: int, primitive: int) -> Outcome:
        """Apply primitive `primitive` to `state` (after two steps nothing more happens)."""
        t = self.transition(np.array([state]), np.array([primitive]))
        return Outcome(int(t.next_state[0]), float(t.reward[0]), bool(t.done[0]), 1.0)

    def transition(self, states: NDArray[np.int64], primitives: NDArray[np.int64]) -> TaskTables:
        """`step` for many (state, primitive) pairs; only unseen two-step endings are drawn."""
        states, primitives = self._checked(states, primitives)
        nxt, done, finishing = moves(states, primitives)
        inputs, node = np.divmod(states, NODES)
        reward = np.zeros(len(states))
        reward[finishing] = self.solved(
            inputs[finishing], node[finishing] - 1, primitives[finishing]
        )
        return TaskTables(nxt, reward, done, np.ones(len(states)))

    def _checked(
        self, states: NDArray[np.int64], primitives: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Both as int64 arrays; a ValueError for an id or primitive out of range."""
        states, primitives = np.asarray(states, np.int64), np.asarray(primitives, np.int64)
        if len(states) and not (states.min() >= 0 and states.max() < self.n_states):
            raise ValueError(f"state ids of {self.name!r} lie in [0, {self.n_states})")
        if len(primitives) and not (primitives.min() >= 0 and primitives.max() < 6):
            raise ValueError(f"primitives of {self.name!r} lie in [0, 6)")
        return states, primitives

    def solved(
        self, inputs: NDArray[np.int64], first: NDArray[np.int64], second: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """1.0 where the classifier reads each input's digit right after `first` then `second`."""
        keys = inputs * 36 + 6 * first + second
        unseen = np.unique(keys[self._read[keys] < 0])
        if len(unseen):
            i, pair = np.divmod(unseen, 36)
            images = self.render(i, pair // 6, pair % 6)
            right = predict(self.trained.model, images) == self.digits.labels[i // len(KINDS)]
            self._read[unseen] = right
        return np.asarray(self._read[keys], dtype=np.float64)

    def oracle_reward(self, input_index: int, first: int, second: int) -> float:
        """The reward of taking `first` then `second` on input `input_index`."""
        return float(self.solved(np.array([input_index]), np.array([first]), np.array([second]))[0])

    def render(
        self, inputs: NDArray[np.int64], first: NDArray[np.int64], second: NDArray[np.int64]
    ) -> Tensor:
        """The image of each (input, first, second) (-1: step not taken): the input kind's
        map, then each primitive taken, each its own grid_sample (three at most in all)."""
        index = torch.as_tensor(np.asarray(inputs, dtype=np.int64))
        digit, kind = index // len(KINDS), index % len(KINDS)
        with torch.no_grad():
            x = warp(self.digits.images[digit], self._kind_grids[kind])
            for taken in (torch.as_tensor(np.asarray(first)), torch.as_tensor(np.asarray(second))):
                rows = torch.nonzero(taken >= 0).ravel()
                if len(rows):
                    x[rows] = warp(x[rows], self._primitive_grids[taken[rows]])
        return x

    def observe(self, states: NDArray[np.int64]) -> NDArray[np.float32]:
        """Each state's image, (n, 1, CANVAS, CANVAS) float32 in [0, 1]."""
        return self.render(*decode(states)).numpy()

    def label(self, states: NDArray[np.int64]) -> NDArray[np.int64]:
        """The true digit of each state's input."""
        return self.digits.labels[np.asarray(states, dtype=np.int64) // NODES // len(KINDS)]
