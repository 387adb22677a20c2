"""An outside learner trains against the control market through its PettingZoo interface.

Each agent of `ControlMarketEnv` (the double integrator, two agents) is an independent
tabular Q-learner over a grid of its observation (position, velocity, the other's previous
control). It sees only what the env gives it; every step it takes is written to the env's
ledger, which audits clean at the end.

    python examples/pettingzoo_control.py [--episodes 300] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray

from agents.pettingzoo_env import ControlMarketEnv
from market.audit import audit

POSITION = np.linspace(-1.2, 1.2, 13)
VELOCITY = np.linspace(-1.0, 1.0, 9)


def cell(observation: NDArray[np.float64], controls: int) -> tuple[int, int, int]:
    """The grid cell of an observation (p, v, the other's previous control)."""
    p, v, other = observation
    return (
        int(np.digitize(p, POSITION)),
        int(np.digitize(v, VELOCITY)),
        int(np.round((other + 1.0) / 2.0 * (controls - 1))),
    )


def train(episodes: int, seed: int) -> tuple[list[float], ControlMarketEnv]:
    """Independent epsilon-greedy Q-learning; the team's return per episode."""
    env = ControlMarketEnv("integrator", agents=2)
    rng = np.random.default_rng(seed)
    m = int(env.action_space(env.possible_agents[0]).n)  # type: ignore[attr-defined]
    q = {a: np.zeros((len(POSITION) + 1, len(VELOCITY) + 1, m, m)) for a in env.possible_agents}
    returns: list[float] = []
    observations, _ = env.reset(seed=seed)
    for episode in range(episodes):
        if episode:
            observations, _ = env.reset()
        epsilon, total = max(0.05, 1.0 - episode / (0.6 * episodes)), 0.0
        while env.agents:
            cells = {a: cell(observations[a], m) for a in env.agents}
            actions = {
                a: int(rng.integers(m)) if rng.random() < epsilon else int(q[a][cells[a]].argmax())
                for a in env.agents
            }
            observations, rewards, _, truncated, _ = env.step(actions)
            for a, action in actions.items():
                target = rewards[a] + (
                    0.0 if truncated[a] else 0.95 * q[a][cell(observations[a], m)].max()
                )
                q[a][cells[a]][action] += 0.2 * (target - q[a][cells[a]][action])
                total += rewards[a]
        returns.append(total)
    env.close()
    return returns, env


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    returns, env = train(args.episodes, args.seed)
    tenth = max(len(returns) // 10, 1)
    print(f"team return, first {tenth} episodes: {np.mean(returns[:tenth]):.2f}")
    print(f"team return, last {tenth} episodes:  {np.mean(returns[-tenth:]):.2f}")
    assert env.ledger is not None
    print(f"ledger: {env.ledger.next_seq:,} events, audit clean: {audit(env.ledger).ok}")


if __name__ == "__main__":
    main()
