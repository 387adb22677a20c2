"""N agents' Q-nets stacked in one module, their hand-written gradient, and RateAdam.

The control learners (`agents/dqn_control.py`) train many small nets on small batches, where
a call into torch costs more than its arithmetic. So the backward pass is written out (three
layers, a handful of batched products) instead of going through autograd, and it returns
two gradients at once: the one with every sample at rate alpha ("unit") and the one with
each sample at its own rate ("rated"). `RateAdam` takes its step from the rated gradient and
its scale from the unit one, so a sample's rate is a step size: a sample at rate beta moves
the network beta / alpha as far as the same sample at alpha (`tests/test_dqn_control.py`).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import nn


class QBank(nn.Module):
    """N agents' Q-nets [d + N - 1, h, h, M] with ReLU, stacked: one pass serves all of them.

    Each layer is one parameter (N, fan_in + 1, fan_out + 1): the weights, then the bias as
    the last row; a hidden layer's last column is the constant (0, ..., 0, 1), which passes
    the 1 its input ends with through to the next layer, so no pass adds a bias or a column
    of ones. That column gets no gradient (`frozen`). Inputs carry the 1 (`with_ones`).
    Speed: the output layer is stored PADDED columns wide (zeros beyond M, which get no
    gradient and so stay zero): a batched product 16 columns wide runs about three times as
    fast as one 5 wide on this CPU's BLAS.
    """

    PADDED = 16

    def __init__(
        self, n_agents: int, n_in: int, n_out: int, hidden: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.n_out = n_out
        dims = [n_in, hidden, hidden, n_out]
        self.layers = nn.ParameterList()
        trainable = []
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1 / math.sqrt(fan_in)  # torch.nn.Linear's default initialisation
            w, b = torch.empty(n_agents, fan_in, fan_out), torch.empty(n_agents, 1, fan_out)
            nn.init.uniform_(w, -bound, bound, generator)
            nn.init.uniform_(b, -bound, bound, generator)
            layer = torch.cat([w, b], dim=1)
            if fan_out == n_out:
                layer = nn.functional.pad(layer, (0, max(self.PADDED - fan_out, 0)))
                mask = torch.zeros_like(layer)
                mask[..., :fan_out] = 1
            else:  # the constant column
                layer = nn.functional.pad(layer, (0, 1))
                layer[:, -1, -1] = 1.0
                mask = torch.ones_like(layer)
                mask[..., -1] = 0
            self.layers.append(nn.Parameter(layer))
            trainable.append(mask)
        self.trainable = trainable
        """Per layer, 1 where a parameter learns, 0 in the constant column and the padding."""
        # Speed: plain references, not a walk through the ParameterList, in every pass.
        self._layers: list[torch.Tensor] = list(self.layers)

    @property
    def weights(self) -> list[torch.Tensor]:
        """Each layer's weights (N, fan_in, fan_out), views of its parameter."""
        return [p[:, :-1, : p.shape[2] - (k < 2)] for k, p in enumerate(self._layers)]

    @property
    def biases(self) -> list[torch.Tensor]:
        """Each layer's biases (N, 1, fan_out), views of its parameter."""
        return [p[:, -1:, : p.shape[2] - (k < 2)] for k, p in enumerate(self._layers)]

    @staticmethod
    def with_ones(inputs: torch.Tensor) -> torch.Tensor:
        """Inputs (..., n_in) with the column of ones the first layer's bias row needs."""
        return torch.cat([inputs, torch.ones_like(inputs[..., :1])], dim=-1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Every agent's Q-values (N, S, M) for its own inputs (N, S, d + N - 1)."""
        return self.trace(self.with_ones(inputs))[-1][..., : self.n_out]

    def trace(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's input and the padded output: [inputs, h1, h2, Q (N, S, PADDED)],
        from inputs that end with a column of ones (`with_ones`); so do h1 and h2."""
        out = [inputs]
        last = len(self._layers) - 1
        for k, p in enumerate(self._layers):
            z = torch.bmm(out[-1], p)
            out.append(z.relu_() if k < last else z)
        return out

    def gradients(
        self, trace: list[torch.Tensor], d_q: torch.Tensor, rate: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per layer, the unit and the rated gradient side by side (N, fan_in + 1, 2 width).

        d_q (N, S, PADDED) is the loss's gradient in the outputs with every sample at rate 1;
        rate (N, S, 1) each sample's own multiplier. Backpropagation is linear in d_q and
        per sample, so the rated gradient differs only in the last product of each layer:
        both come from one product with the layer's output gradient and its rate-scaled copy
        side by side. Where a parameter does not learn (`trainable`), both are 0.
        """
        grads: list[torch.Tensor] = []
        delta = d_q
        for k in range(len(self._layers) - 1, -1, -1):
            a = trace[k]
            grads.append(torch.bmm(a.mT, torch.cat([delta, delta * rate], dim=-1)))
            if k:
                delta = torch.bmm(delta, self._layers[k].mT).mul_(a > 0)
        grads.reverse()
        torch._foreach_mul_(grads, self._doubled)
        return grads

    @functools.cached_property
    def _doubled(self) -> list[torch.Tensor]:
        """`trainable` twice side by side, the layout of `gradients`."""
        return [torch.cat([m, m], dim=-1) for m in self.trainable]


class RateAdam:
    """Adam whose step scales with each sample's rate (methods.md Part 2, IQL).

    m tracks the rated gradient, v the unit gradient (every sample at rate alpha), and the
    step is alpha m_hat / (sqrt(v_hat) + eps). Adam's normalisation by sqrt(v) then no longer
    cancels the rates: a minibatch all at beta moves the net beta / alpha as far as the same
    minibatch at alpha. With every rate alpha it is exactly Adam.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        """One step from `QBank.gradients`' unit and rated gradients, side by side."""
        b1, b2 = self.betas
        self.steps += 1
        unit = [g[..., : p.shape[2]] for g, p in zip(grads, self.params, strict=True)]
        rated = [g[..., p.shape[2] :] for g, p in zip(grads, self.params, strict=True)]
        # Speed: one fused call per Adam operation over every layer.
        torch._foreach_lerp_(self.m, rated, 1 - b1)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, unit, unit, 1 - b2)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**self.steps))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(self.params, self.m, denom, -self.lr / (1 - b1**self.steps))
