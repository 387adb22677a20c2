"""What a learner's nets read of a task's state ids: a one-hot row (tabular tasks), the
task's observation through a small CNN (tasks over images: Mental Rotation, Two Rooms, a
MiniGrid env) or through a tanh layer (a vector: a Gymnasium env's Box or one-hot Discrete).

`inputs(task, states)` turns state ids into the tensor a `StateEncoder` reads, so one net
definition serves both kinds of task.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from market.tasks import Task


def inputs(task: Task, states: NDArray[np.int64]) -> torch.Tensor:
    """What the encoder of `task` reads for `states`: the ids, or their observations."""
    if task.observation_shape is None:
        return torch.as_tensor(states, dtype=torch.int64)
    return torch.as_tensor(task.observe(states), dtype=torch.float32)


class ConvFeatures(nn.Module):
    """Two 3x3 conv layers (the second strided when the image is large) and a flatten."""

    def __init__(self, shape: tuple[int, ...], channels: int) -> None:
        super().__init__()
        c, h, w = shape
        stride = 2 if min(h, w) >= 16 else 1
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=stride, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            self.size = int(self.net(torch.zeros(1, c, h, w)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class VectorFeatures(nn.Module):
    """A vector observation through one tanh layer of width `width` (an MLP's first layer;
    the bid and value heads add the second)."""

    def __init__(self, shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), width), nn.Tanh())
        self.size = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def observation_features(shape: tuple[int, ...], channels: int) -> ConvFeatures | VectorFeatures:
    """The features of an observation of `shape`: a CNN of `channels` over an image (C, H, W),
    else a tanh layer of 64 units over the vector."""
    return ConvFeatures(shape, channels) if len(shape) == 3 else VectorFeatures(shape, VECTOR_WIDTH)


VECTOR_WIDTH = 64
"""The width of a vector observation's first layer (CleanRL's PPO uses 64 for CartPole)."""


class OneHot(nn.Module):
    """A state id as a one-hot row of width `n_states`."""

    def __init__(self, n_states: int) -> None:
        super().__init__()
        self.size = n_states

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(states, self.size).float()


def state_encoder(task: Task, channels: int) -> OneHot | ConvFeatures | VectorFeatures:
    """The encoder of `task`'s states: one-hot for tabular tasks, else its observations'
    features (`observation_features`)."""
    if task.observation_shape is None:
        return OneHot(task.n_states)
    return observation_features(task.observation_shape, channels)
