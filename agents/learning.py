"""A learning society: PPO primitives that bid for the kernel and learn from the bus.

The society's only data is what the ledger commits: a payoff tracker on the bus folds each
bidder's auction utility from the payoff events addressed to its account (its reward, its
payment out, its discounted payment in from the next sale), and hands over the finished
(state, bid, utility) samples: `PayoffTracker` one transaction at a time (the episode
kernel), `BatchPayoffTracker` a round's batch at a time (the round kernel), the same samples
in the same order either way. Clones feed their primitive's one buffer; when every
primitive has a full batch, all of them take one PPO update together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from agents.ppo_bidder import PPOBidders
from agents.ppo_vision_bidder import VisionBidders
from agents.settings import PPOConfig
from ledger.events import ENVIRONMENT, Close, Endow
from ledger.payoff_columns import BatchPayoffTracker, SampleColumns
from ledger.payoffs import PayoffTracker, Sample
from ledger.store import Ledger
from ledger.transaction import Transaction
from ledger.units import UNIT
from market.bus import Bus
from market.core import EpisodeResult
from market.economy import Economy, Seats
from market.run import KernelChoice, RunConfig, RunSummary, simulate, task_of
from market.society import Society
from market.tasks import Task


class LearningSociety:
    """The bidders of a society as PPO primitives trained on their ledger payoffs."""

    def __init__(
        self,
        task: Task,
        society: Society,
        config: PPOConfig,
        seed: int,
        economy: Economy | None = None,
    ) -> None:
        """With an `economy`, every slot has a policy of its own (a member's, docs/economy.md):
        a member learns from its own payoffs only, and a child starts from its parent's."""
        self.config = config
        self.agent: PPOBidders | VisionBidders
        self.economy = economy
        if economy is not None and task.observation_shape is not None:
            raise ValueError(
                f"an economy's learners need a tabular task, not {task.name!r} (a child copies "
                "its parent's table); use --bidder random for an economy over images"
            )
        if economy is not None:
            slots = tuple(range(economy.capacity))
            self.agent = PPOBidders(task.n_states, slots, config, seed)
        elif task.observation_shape is None:
            self.agent = PPOBidders(task.n_states, society.primitive_of, config, seed)
        else:
            shape = task.observation_shape
            self.agent = VisionBidders(task.observe, shape, society.primitive_of, config, seed)
        n = self.agent.n_primitives
        """Policies (rows): one per primitive, clones sharing it, or one per economy slot."""
        self._states: list[list[int]] = [[] for _ in range(n)]
        self._bids: list[list[float]] = [[] for _ in range(n)]
        self._utilities: list[list[float]] = [[] for _ in range(n)]
        self.updates: list[dict[str, float]] = []
        self.recent_bids: list[deque[float]] = [deque(maxlen=1000) for _ in task.primitive_names]
        """Each primitive's last 1000 bids (all its members')."""
        self.received: list[Sample] = []
        """Every sample the bus delivered, kept only when `keep_samples` is set (tests)."""
        self.keep_samples = False
        self.auctions = 0
        """Finished auctions delivered to this society (a round's worth at a time under the
        round kernel; an update's metrics record the count when it ran)."""
        self.on_update: Callable[[dict[str, float]], None] | None = None
        """Called after every update with its metrics (for metrics files and snapshots)."""
        self.frozen = False
        """Bid, but drop every batch instead of learning from it (an evaluation)."""
        self._row_of: dict[str, int] | None = None
        """With an economy: each living member's policy row (its slot)."""
        if economy is None:
            self._accounts_of = [
                {a for a, q in zip(society.accounts, society.primitive_of, strict=True) if q == p}
                for p in range(n)
            ]
        else:
            self._row_of = {a: i for i, a in enumerate(economy.accounts) if a is not None}
            self._accounts_of = [set() if a is None else {a} for a in economy.accounts]
            self._seats = Seats(economy.accounts)
            """Members' slots as this society has heard of them (births and closes)."""
        self.retired: set[int] = {p for p, accounts in enumerate(self._accounts_of) if not accounts}
        """Policies whose every bidder has closed, or free slots: no update waits for them."""

    def attach(self, bus: Bus) -> None:
        """Learn from every transaction the bus commits from now on."""
        gamma = self.config.gamma
        bus.subscribe_all(
            PayoffTracker(gamma, self._on_samples).apply,
            BatchPayoffTracker(gamma, self._on_columns).apply_batch,
        )
        if self.economy is not None:
            bus.subscribe_all(self._lifecycle)

    def _lifecycle(self, tx: Transaction) -> None:
        """An economy's settlement, as the ledger has it: a closed member's policy retires,
        a child's (`Endow` from its parent) starts from its parent's."""
        if tx.header[2] != -1:  # an episode's auction: no one is born or closes there
            return
        for model, values in tx.body:
            if model is Close:
                self._seats.free(values[0])
                self.retire(values[0])
            elif model is Endow and values[0] != ENVIRONMENT:
                parent, child = values[0], values[1]
                assert self._row_of is not None
                self.born(self._row_of[parent], self._seats.seat(child), child)

    def bids(self, states: NDArray[np.int64]) -> NDArray[np.float64]:
        """Every bidder's bid at each state, drawn in one batched call."""
        return self.agent.bids(states)

    def _on_samples(self, samples: list[Sample]) -> None:
        """One finished auction: every bidder's (state, bid, utility), into its buffer."""
        rows = self._row_of
        for _, _, account, p, state, units, utility in samples:
            bid = units / UNIT
            if rows is None:
                row = p
            elif (found := rows.get(account)) is not None:
                row = found
            else:  # closed since it bid (an auction still waiting for its next sale):
                continue  # its policy is retired, and its slot may hold a child already
            self._states[row].append(state)
            self._bids[row].append(bid)
            self._utilities[row].append(float(utility) / UNIT)
            self.recent_bids[p].append(bid)
        self.auctions += 1
        if self.keep_samples:
            self.received.extend(samples)
        if self._ready():
            self._update()

    def _on_columns(self, samples: SampleColumns) -> None:
        """A batch's finished auctions, as columns, into the buffers (in the same order)."""
        if self._row_of is not None:
            raise ValueError("an economy runs on the episode kernel")
        bids = samples.bid / UNIT
        utilities = samples.utility / UNIT
        for p in range(self.agent.n_primitives):
            mine = samples.primitive == p
            self._states[p].extend(samples.state[mine].tolist())
            self._bids[p].extend(bids[mine].tolist())
            self._utilities[p].extend(utilities[mine].tolist())
            self.recent_bids[p].extend(bids[mine][-1000:].tolist())
        self.auctions += int(samples.auction[-1]) + 1
        if self.keep_samples:
            names = [samples.strings[a] for a in samples.account.tolist()]
            self.received.extend(
                Sample(*row)
                for row in zip(
                    samples.episode.tolist(),
                    samples.step.tolist(),
                    names,
                    samples.primitive.tolist(),
                    samples.state.tolist(),
                    samples.bid.tolist(),
                    samples.utility.tolist(),
                    strict=True,
                )
            )
        while self._ready():
            self._update()

    def retire(self, account: str) -> None:
        """`account` has closed: once all of its policy's bidders have, updates stop
        waiting for that policy's samples."""
        if self._row_of is not None:
            self._row_of.pop(account)
        for p, accounts in enumerate(self._accounts_of):
            accounts.discard(account)
            if not accounts:
                self.retired.add(p)
        while self._ready():
            self._update()

    def born(self, parent: int, child: int, account: str) -> None:
        """An economy's birth: slot `child`'s policy becomes a perturbed copy of slot
        `parent`'s (or a fresh one) and starts an empty batch for `account`."""
        assert self._row_of is not None and self.economy is not None
        config = self.economy.config
        agent = self.agent
        assert isinstance(agent, PPOBidders)
        agent.inherit(parent, child, config.mutation, fresh=config.child == "fresh")
        for column in (self._states, self._bids, self._utilities):
            column[child].clear()
        self._row_of[account] = child
        self._accounts_of[child] = {account}
        self.retired.discard(child)

    def _ready(self) -> bool:
        """Every primitive still alive has a full batch (and one is alive)."""
        k = self.config.batch
        live = [len(s) for p, s in enumerate(self._states) if p not in self.retired]
        return bool(live) and min(live) >= k

    def _pad_retired(self) -> None:
        """Fill a retired primitive's buffers to a batch (its last sample again, or a neutral
        one): its parameters no longer bid, and the stacked update needs a full row."""
        k = self.config.batch
        for p in self.retired:
            have = len(self._states[p])
            state, bid = (self._states[p][-1], self._bids[p][-1]) if have else (0, 0.5)
            self._states[p].extend([state] * (k - have))
            self._bids[p].extend([bid] * (k - have))
            self._utilities[p].extend([0.0] * (k - have))

    def _update(self) -> None:
        k = self.config.batch
        self._pad_retired()
        columns = (self._states, self._bids, self._utilities)
        take = [np.asarray([c[:k] for c in col]) for col in columns]
        for col in columns:
            for p in range(len(col)):
                del col[p][:k]
        if self.frozen:
            return
        metrics = self.agent.update(take[0], take[1], take[2])
        metrics |= {"mean_utility": float(take[2].mean()), "auctions": float(self.auctions)}
        self.updates.append(metrics)
        if self.on_update is not None:
            self.on_update(metrics)

    def mean_bids(self) -> list[float]:
        """Each primitive's mean bid over its last 1000 bids."""
        return [float(np.mean(b)) if b else float("nan") for b in self.recent_bids]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue learning where this society stands."""
        agent = self.agent
        return {
            "bank": agent.bank.state_dict(),
            "policy_opt": agent.policy_opt.state_dict(),
            "value_opt": agent.value_opt.state_dict(),
            "rng": agent.rng.bit_generator.state,
            "generator": agent.generator.get_state(),
            "buffers": (self._states, self._bids, self._utilities),
            "updates": self.updates,
            "auctions": self.auctions,
        }

    def load_parameters(self, state: dict[str, Any]) -> None:
        """Take the bid policies and value nets of a snapshot (a transfer: optimisers, random
        states and buffers start afresh)."""
        self.agent.bank.load_state_dict(state["bank"])
        self.agent.parameters_changed()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output."""
        agent = self.agent
        agent.bank.load_state_dict(state["bank"])
        agent.policy_opt.load_state_dict(state["policy_opt"])
        agent.value_opt.load_state_dict(state["value_opt"])
        agent.rng.bit_generator.state = state["rng"]
        agent.generator.set_state(state["generator"])
        agent.parameters_changed()
        self._states, self._bids, self._utilities = state["buffers"]
        self.updates = list(state["updates"])
        self.auctions = int(state["auctions"])


def one_thread() -> None:
    """Run torch on one thread: the nets are tiny, and a second thread only adds
    synchronisation (fused Adam on two threads costs several times its one-thread time)."""
    torch.set_num_threads(1)


@contextmanager
def flushing_subnormals() -> Iterator[None]:
    """Flush subnormal floats (below 1.2e-38) to zero on this thread while the block runs,
    and restore the thread's setting after: a learning run's loop runs in this block.

    A net whose units stop receiving gradient is shrunk by its L2 term until its weights and
    Adam moments are subnormal, where the CPU's arithmetic takes a slow path. On CartPole the
    learning society's PPO update went from 30 ms to 110-140 ms once nearly every weight of
    its value nets was subnormal, about 60,000 env steps in, and the run from 12,000 to
    5,000 env steps/s (docs/learning.md). Flushed, such a weight is 0 instead of 1e-39: a
    run is as deterministic as before, but not the run it was unflushed, bit for bit.

    The setting is the thread's, so it is restored after: code that runs later in the same
    process (a notebook, a test) sees IEEE arithmetic again.
    """
    was = flushes_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def flushes_subnormals() -> bool:
    """Whether this thread flushes subnormals now (a product that would be one comes out 0)."""
    return bool((torch.tensor(1e-30) * torch.tensor(1e-10)).item() == 0.0)


def learner_seed(run_seed: int) -> int:
    """The learning society's seed, derived from the run's one seed (its first spawn)."""
    (child,) = np.random.SeedSequence(run_seed).spawn(1)
    return int(child.generate_state(1)[0])


def run_learning(
    config: RunConfig,
    ledger: Ledger,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    keep_samples: bool = False,
    kernel: KernelChoice = "auto",
) -> tuple[RunSummary, LearningSociety]:
    """Run `config` (whose `learner` holds a PPOConfig) with a learning society."""
    one_thread()
    task = task_of(config)
    ppo = PPOConfig.model_validate(config.learner or {})
    society = Society.of(task, config.cloned)
    economy = Economy(config.economy, society) if config.economy is not None else None
    learner = LearningSociety(task, society, ppo, learner_seed(config.seed), economy)
    learner.keep_samples = keep_samples
    bus = Bus(ledger)
    learner.attach(bus)
    with flushing_subnormals():
        summary = simulate(
            config, ledger, learner, on_episode, bus=bus, kernel=kernel, task=task, economy=economy
        )
    return summary, learner
