"""The bidding primitive of Chang et al. (2020) over images: a Beta bid from a CNN, with PPO.

The same learner as `agents/ppo_bidder.py` (same Beta head, same PPO, same settings), for
tasks whose states are images (Mental Rotation, Two Rooms): each primitive's bid policy and
value net read the task's observation of the state through a small CNN, or a tanh layer
for a vector observation (`observation_features`: an MLP bidder for a Gymnasium Box),
instead of a one-hot row, so nothing can be tabulated per state and each net runs on every
sample. Clones share their primitive's nets and draw their bids independently.

Policy: Beta(mu * nu, (1 - mu) * nu), mu = sigmoid(.), nu = softplus(.), on CNN features and
a hidden layer; the head starts at exactly Beta(1, 1). Value: the same trunk shape, its own
weights, to one output. Each bidder contributes (s_t, its bid, its auction utility U_t) per
auction; PPO: advantage U - V(s) normalised per minibatch, clip, entropy bonus, value MSE +
L2, a grad-norm clip per primitive, Adam (settings: `agents.settings.PPOConfig`).

Speed: as in `PPOBidders`, the P primitives' parameters are stacked (P, ...), so every layer
of every primitive is one batched call (`baddbmm`, a grouped convolution) and one step trains
all of them; their parameters, losses and gradient-norm clips stay separate. The nets are
first built one primitive at a time, as `nn.Linear` and `ConvFeatures` initialise them (every
bid policy, then every value net), and then stacked, so a seed gives the same initial weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from agents.encoders import ConvFeatures, VectorFeatures, observation_features
from agents.ppo_bidder import (
    UNIFORM_NU,
    beta_features,
    beta_head,
    beta_terms,
    clip_per_primitive,
    policy_ratio,
)
from agents.settings import PPOConfig

Observe = Callable[[NDArray[np.int64]], NDArray[np.float32]]
"""A task's `observe`: state ids to observations (n, C, H, W)."""


def _stack(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]))


class StackedLinear(nn.Module):
    """P independent linear layers, (P, m, n_in) -> (P, m, n_out): one `baddbmm`."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = _stack([layer.weight for layer in layers])  # (P, n_out, n_in)
        self.bias = _stack([layer.bias[None] for layer in layers])  # (P, 1, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Speed: (n_out, n_in) as nn.Linear holds it; a (n_in, 2) weight is 4 times slower
        return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))


def _stack_conv(convs: Sequence[nn.Conv2d]) -> tuple[nn.Parameter, nn.Parameter]:
    return _stack([c.weight for c in convs]), _stack([cast(torch.Tensor, c.bias) for c in convs])


class StackedConv(nn.Module):
    """P independent `ConvFeatures`, (P, m, C, H, W) -> (P, m, features): grouped convolutions,
    the P images of a sample side by side as P groups of channels."""

    def __init__(self, nets: Sequence[ConvFeatures]) -> None:
        super().__init__()
        first, second = ([cast(nn.Conv2d, net.net[i]) for net in nets] for i in (0, 2))
        self.w1, self.b1 = _stack_conv(first)  # (P, channels, C, 3, 3), (P, channels)
        self.w2, self.b2 = _stack_conv(second)
        self.stride = first[0].stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, m = x.shape[:2]
        h = x.transpose(0, 1).reshape(m, -1, *x.shape[3:])  # (m, P * C, H, W)
        # Speed: channels last, where oneDNN's grouped convolution is about 1.7 times as fast
        # forward and back, and a PPO update of DoorKey's seven primitives 1.4 times
        h = h.contiguous(memory_format=torch.channels_last)
        for w, b, stride in ((self.w1, self.b1, self.stride), (self.w2, self.b2, (2, 2))):
            conv = nn.functional.conv2d(h, w.flatten(0, 1), b.flatten(), stride, 1, groups=p)
            h = torch.relu(conv)
        return h.contiguous().reshape(m, p, -1).transpose(0, 1)


class StackedVector(nn.Module):
    """P independent `VectorFeatures`, (P, m, *shape) -> (P, m, width): a tanh layer."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.linear = StackedLinear(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x.flatten(2)))


def _features(nets: Sequence[nn.Module]) -> StackedConv | StackedVector:
    """The stacked features of P primitives' `observation_features`."""
    if isinstance(nets[0], ConvFeatures):
        return StackedConv(nets)  # type: ignore[arg-type]
    return StackedVector([cast(nn.Linear, net.net[1]) for net in cast(list[VectorFeatures], nets)])


class StackedNet(nn.Module):
    """P primitives' nets of one kind: features, a ReLU hidden layer, a linear output."""

    def __init__(
        self, features: Sequence[nn.Module], hidden: Sequence[nn.Linear], out: Sequence[nn.Linear]
    ) -> None:
        super().__init__()
        self.features = _features(features)
        self.hidden, self.out = StackedLinear(hidden), StackedLinear(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(P, m, *observation) -> (P, m, n_out)."""
        return self.out(torch.relu(self.hidden(self.features(x))))  # type: ignore[no-any-return]


def _net(p: int, shape: tuple[int, ...], config: PPOConfig, n_out: int) -> StackedNet:
    """P nets, each initialised in turn as its own modules would be (features, hidden, out)."""
    layers: list[tuple[nn.Module, nn.Linear, nn.Linear]] = []
    for _ in range(p):
        features = observation_features(shape, config.channels)
        hidden = nn.Linear(features.size, config.hidden)
        layers.append((features, hidden, nn.Linear(config.hidden, n_out)))
    return StackedNet(*(list(column) for column in zip(*layers, strict=True)))


class VisionBank(nn.Module):
    """The bid policies and value nets of P primitives, stacked."""

    def __init__(self, n_primitives: int, shape: tuple[int, ...], config: PPOConfig) -> None:
        super().__init__()
        self.policy = _net(n_primitives, shape, config, 2)
        self.value = _net(n_primitives, shape, config, 1)
        with torch.no_grad():  # every state starts at Beta(1, 1)
            self.policy.out.weight.zero_()
            self.policy.out.bias.copy_(torch.tensor([0.0, UNIFORM_NU]))

    def beta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each primitive's Beta (alpha, beta) at its observations x (P, m, ...): (P, m) each."""
        return beta_head(*self.policy(x).unbind(-1))


class VisionBidders:
    """Draws every bidder's bid from its primitive's CNN and trains every primitive with PPO."""

    def __init__(
        self,
        observe: Observe,
        shape: tuple[int, ...],
        primitive_of: tuple[int, ...],
        config: PPOConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or PPOConfig()
        self.observe, self.primitive_of = observe, np.asarray(primitive_of)
        self.n_primitives = int(max(primitive_of)) + 1
        torch_seed, numpy_seed = np.random.SeedSequence(seed).generate_state(2)
        torch.manual_seed(int(torch_seed))  # parameter initialisation
        self.generator = torch.Generator().manual_seed(int(torch_seed))
        self.rng = np.random.default_rng(int(numpy_seed))
        self.bank = VisionBank(self.n_primitives, shape, self.config)
        cfg = self.config
        self._policy_params = list(self.bank.policy.parameters())
        self._value_params: list[torch.Tensor] = list(self.bank.value.parameters())
        # Speed: the fused Adam kernel, as in PPOBidders, stepped by `_adam_step`
        self.policy_opt = torch.optim.Adam(self._policy_params, lr=cfg.policy_lr, fused=True)
        self.value_opt = torch.optim.Adam(self._value_params, lr=cfg.value_lr, fused=True)

    def _shared(self, states: NDArray[np.int64]) -> torch.Tensor:
        """The observations of `states`, one copy per primitive: (P, len(states), ...)."""
        x = torch.as_tensor(self.observe(states))
        return x.expand(self.n_primitives, *x.shape)

    @torch.no_grad()
    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Independent draws for every bidder at every state: shape (len(states), n_bidders)."""
        alpha, beta = (
            t.double().numpy()[self.primitive_of] for t in self.bank.beta(self._shared(states))
        )
        drawn: NDArray[np.float64] = np.clip(self.rng.beta(alpha, beta), 1e-6, 1 - 1e-6).T
        return drawn

    @torch.no_grad()
    def mean_bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Each primitive's mean bid at each state: shape (P, len(states))."""
        alpha, beta = self.bank.beta(self._shared(states))
        return np.asarray((alpha / (alpha + beta)).double().numpy(), dtype=np.float64)

    def parameters_changed(self) -> None:
        """Nothing is cached between updates (kept for the learners' common interface)."""

    def update(
        self, states: NDArray[np.int64], bids: NDArray[np.float64], utilities: NDArray[np.float64]
    ) -> dict[str, float]:
        """One PPO pass over a batch per primitive: arrays of shape (P, batch)."""
        cfg = self.config
        p, n = states.shape
        x = torch.as_tensor(self.observe(states.reshape(-1)))
        x = x.reshape(p, n, *x.shape[1:])
        b = torch.as_tensor(bids, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        u = torch.as_tensor(utilities, dtype=torch.float32)
        features = beta_features(b)
        with torch.no_grad():
            old = self._log_prob(x, features)
        stats: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.generator)
            # Speed: the epoch's samples in minibatch order once, so every minibatch is a slice
            shuffled = [t[:, order] for t in (x, features, u, old)]
            for start in range(0, n, cfg.minibatch):
                stats.append(self._step(*(t[:, start : start + cfg.minibatch] for t in shuffled)))
        surrogate, mse, entropy = torch.stack(stats).mean(0).double().tolist()
        return {"policy_loss": -surrogate - cfg.entropy_coef * entropy, "value_loss": mse,
                "entropy": entropy}  # fmt: skip

    def _log_prob(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log psi(b | s) of each primitive's samples (P, m), b as `beta_features(b)`."""
        return (beta_terms(*self.bank.beta(x))[0] * features).sum(-1)

    def _step(
        self, x: torch.Tensor, features: torch.Tensor, u: torch.Tensor, old: torch.Tensor
    ) -> torch.Tensor:
        """One gradient step of every primitive on its minibatch (bids as `beta_features`);
        returns the means of the clipped surrogate, the value's squared error and the
        entropy over primitives. Speed: as `PPOBidders._step` (one backward over the summed
        losses, the clamp with the bound that can bind, the L2 gradient added after)."""
        cfg = self.config
        values = self.bank.value(x)[..., 0]
        with torch.no_grad():
            std, mean = torch.std_mean(u - values, dim=1, keepdim=True)
            adv = (u - values - mean) / (std + 1e-8)
            gain = adv > 0
            low = torch.where(gain, -math.inf, 1 - cfg.clip)
            high = torch.where(gain, 1 + cfg.clip, math.inf)
        terms, entropy_all = beta_terms(*self.bank.beta(x))
        ratio = policy_ratio((terms * features).sum(-1), old)
        surrogate = (adv * torch.clamp(ratio, low, high)).mean(1)  # min(r A, clip(r) A)
        entropy = entropy_all.mean(1)
        error = values - u
        mse = (error * error).mean(1)
        loss = (mse - surrogate - cfg.entropy_coef * entropy).sum()
        value_params = self._value_params
        for w in (*self._policy_params, *value_params):
            w.grad = None
        loss.backward()
        grads = [w.grad for w in value_params if w.grad is not None]
        torch._foreach_add_(grads, value_params, alpha=2 * cfg.value_l2)  # the L2's gradient
        clip_per_primitive([self._policy_params, value_params], cfg.max_grad_norm)
        for opt in (self.policy_opt, self.value_opt):
            _adam_step(opt)
        return torch.stack([surrogate, mse, entropy.detach()]).detach().mean(1)


def _adam_step(opt: torch.optim.Adam) -> None:
    """`opt.step()` of a fused Adam of one group, straight to its kernel: the same arithmetic,
    bit for bit. Speed: torch.optim's bookkeeping costs several times the kernel here."""
    if not opt.state:
        opt.step()  # the first step: torch.optim makes the state
        return
    group = opt.param_groups[0]
    states = [opt.state[p] for p in group["params"]]
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(
        group["params"], [p.grad for p in group["params"]], [s["exp_avg"] for s in states],
        [s["exp_avg_sq"] for s in states], [], steps, lr=group["lr"], beta1=group["betas"][0],
        beta2=group["betas"][1], weight_decay=group["weight_decay"], eps=group["eps"],
        amsgrad=False, maximize=False,
    )  # fmt: skip
