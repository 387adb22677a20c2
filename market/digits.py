"""The digits of Mental Rotation and the fixed classifier that pays its reward.

The data are scikit-learn's 1797 8x8 digits (values 0..16, shipped with the package). Each
is scaled to DIGIT x DIGIT pixels by bilinear interpolation and placed at the centre of a
CANVAS x CANVAS canvas of values in [0, 1]. A fixed stratified split (SPLIT_SEED, TEST_SHARE
of each class held out) is part of the task's definition: it does not depend on a run's seed.

The classifier is a small CNN trained deterministically (TRAIN_SEED, one thread) on the
untransformed canvases of the train split. It is trained once and kept in
`market.cache.cache_dir()` with its test accuracy and training time beside the weights.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from market.cache import cache_dir

CANVAS = 40
"""Side of the square canvas in pixels: room for a 60-degree turn plus an 8-pixel shift."""
DIGIT = 16
"""Side of a scaled digit in pixels (8x8 scaled by 2)."""
SPLIT_SEED = 0
"""Seed of the fixed train/test split (part of the task, not of a run)."""
TEST_SHARE = 0.2
"""Share of each digit class held out for the test split."""
TRAIN_SEED = 0
"""Seed of the classifier's initial weights and minibatch order."""
VERSION = 1
"""Bumped whenever the data, the network or its training changes (names the cache file)."""
EPOCHS = 20
"""Passes over the train split."""
BATCH = 32
"""Images per Adam step."""
LEARNING_RATE = 2e-3
"""Adam's step size."""
CHUNK = 64
"""Images per classifier forward pass: every pass has this shape (see `logits`)."""


class Digits(NamedTuple):
    """Every digit on its canvas, its label, and the fixed split (indices into both)."""

    images: Tensor
    """(1797, 1, CANVAS, CANVAS) float32 in [0, 1], each digit centred."""
    labels: NDArray[np.int64]
    train: NDArray[np.int64]
    test: NDArray[np.int64]


class Classifier(nn.Module):
    """A small CNN reading a (n, 1, CANVAS, CANVAS) canvas as one of ten digits: two strided
    5x5 convolutions (16 and 32 channels) and a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5, stride=2, padding=2)
        self.out = nn.Linear(32 * (CANVAS // 4) ** 2, 10)

    def forward(self, x: Tensor) -> Tensor:
        """The ten logits of each image."""
        x = F.relu(self.conv2(F.relu(self.conv1(x))))  # strides, not pooling: pooling is slow
        return self.out(x.flatten(1))  # type: ignore[no-any-return]


class Trained(NamedTuple):
    """The classifier with what was measured when it was trained."""

    model: Classifier
    accuracy: float
    """Share of the test split's untransformed canvases it reads correctly."""
    seconds: float
    """Wall-clock training time (one thread)."""


def on_canvas(small: NDArray[np.float64]) -> Tensor:
    """8x8 digits (values 0..16) scaled to DIGIT x DIGIT and centred on the canvas."""
    x = torch.as_tensor(small / 16.0, dtype=torch.float32).unsqueeze(1)
    x = F.interpolate(x, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    pad = (CANVAS - DIGIT) // 2
    return F.pad(x, (pad, pad, pad, pad)).clamp(0.0, 1.0)


def stratified_split(labels: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Train and test indices: TEST_SHARE of each class, drawn with SPLIT_SEED, held out."""
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[NDArray[np.int64]] = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: round(TEST_SHARE * len(members))])
    held = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), held).astype(np.int64), held.astype(np.int64)


@lru_cache(maxsize=1)
def load_digits() -> Digits:
    """scikit-learn's digits on their canvases, with the fixed split (loaded once)."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import: only when asked

    data = sklearn_digits()
    labels = np.asarray(data.target, dtype=np.int64)
    train, test = stratified_split(labels)
    return Digits(on_canvas(np.asarray(data.images, dtype=np.float64)), labels, train, test)


def logits(model: Classifier, images: Tensor) -> Tensor:
    """The model's ten logits of each image, the same whatever the image is batched with.

    Every forward pass has exactly CHUNK images (the last one padded with blanks): a lone
    image takes another convolution algorithm whose last bits differ, and a reward must not
    depend on which kernel asked for it.
    """
    parts = []
    with torch.no_grad():
        for lo in range(0, len(images), CHUNK):
            part = images[lo : lo + CHUNK]
            padded = torch.zeros((CHUNK, *part.shape[1:]), dtype=part.dtype)
            padded[: len(part)] = part
            parts.append(model(padded)[: len(part)])
    return torch.cat(parts) if parts else torch.zeros((0, 10))


def predict(model: Classifier, images: Tensor) -> NDArray[np.int64]:
    """The digit the model reads in each image."""
    return logits(model, images).argmax(1).numpy().astype(np.int64)


def accuracy(model: Classifier, images: Tensor, labels: NDArray[np.int64]) -> float:
    """Share of `images` the model reads as their `labels`."""
    return float((predict(model, images) == labels).mean())


def train(digits: Digits, seed: int = TRAIN_SEED) -> Classifier:
    """A classifier fitted to the train split's untransformed canvases (one thread, Adam)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and polite on a shared machine
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global generator is untouched
            torch.manual_seed(seed)
            model = Classifier()
            x, y = digits.images[digits.train], torch.as_tensor(digits.labels[digits.train])
            _fit(model, x, y, seed)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _fit(model: Classifier, x: Tensor, y: Tensor, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    order = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        shuffled = torch.randperm(len(x), generator=order)
        for lo in range(0, len(x), BATCH):
            idx = shuffled[lo : lo + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()


def cache_path(seed: int = TRAIN_SEED) -> Path:
    """Where the classifier of `seed` is kept: the name carries everything that decides it."""
    name = f"digits-cnn-v{VERSION}-c{CANVAS}-d{DIGIT}-split{SPLIT_SEED}-seed{seed}.pt"
    return cache_dir() / name


def classifier(seed: int = TRAIN_SEED) -> Trained:
    """The trained classifier of `seed`: read from the cache, or trained once and stored."""
    path = cache_path(seed)
    if not path.exists():
        _store(path, seed)
    return _load(path)


@lru_cache(maxsize=4)
def _load(path: Path) -> Trained:
    saved = torch.load(path, weights_only=True)
    model = Classifier()
    model.load_state_dict(saved["weights"])
    return Trained(model.eval(), float(saved["accuracy"]), float(saved["seconds"]))


def _store(path: Path, seed: int) -> None:
    digits = load_digits()
    began = time.perf_counter()
    model = train(digits, seed)
    seconds = time.perf_counter() - began
    acc = accuracy(model, digits.images[digits.test], digits.labels[digits.test])
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    torch.save({"weights": model.state_dict(), "accuracy": acc, "seconds": seconds}, part)
    os.replace(part, path)  # atomic: a concurrent run reads the whole file or trains its own


def classifier_accuracy(seed: int = TRAIN_SEED) -> float:
    """The classifier's accuracy on the test split's untransformed canvases."""
    return classifier(seed).accuracy
