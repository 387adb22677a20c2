"""The typed events of the ledger: one frozen Pydantic model per kind, in one union.

Every event carries a global sequence number (`seq`), the transaction it belongs to (`tx`, the
seq of the transaction's first event), the run id, the episode, the step and the SimPy time.
Money-moving events are transfers `src -> dst` of a non-negative integer `amount` in units
(see `ledger.units`); a transfer balances by construction, so the books always sum to zero.
New kinds are added here as new models, not as a new ledger: the lifecycle of an account in a
society where wealth matters (`Endow`, `Rent`, `Liquidate`, `Dividend`, `Close`, and a
`Bid`'s `cap`) lives in the same ledger as the auctions. A kind's sets (transfer, lifecycle,
auction) follow from its class: a `Transfer` subclass moves money; `lifecycle` marks an
account's life besides auctions.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, TypeAdapter, model_validator

Units = Annotated[int, Field(strict=True, ge=0)]
"""A non-negative amount of money units: an int, never coerced from a float or a string."""
SignedUnits = Annotated[int, Field(strict=True)]
"""A balance in units, which may be negative."""
Observation = list[float]
"""What a task observed of a state, flattened: a Gymnasium env's observation as it gave it
(stored as float32, which holds every observation those envs make exactly)."""

ENVIRONMENT = "environment"
"""The account that pays rewards and sells the first state of every episode."""
AUCTIONEER = "auctioneer"
"""The account that mints credit where a mechanism creates it (Vickrey's b1 - b2)."""
TREASURY = "treasury"
"""The account that collects rent and the wealth of closed accounts. Unlike the environment
and the auctioneer it is inside the economy: its money still counts in the society's total."""
CONTROL = "control"
"""The mechanism an `EpisodeStart` names in a control run: its steps move rewards only."""
SYSTEM = "system"
"""The addressee of a control system's public state changes (the control variant); it holds
no money and every agent may read what is addressed to it."""


class EventBase(BaseModel):
    """Fields every event carries; events are immutable once made."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lifecycle: ClassVar[bool] = False
    """True for the kinds of an account's life besides auctions (an economy's)."""

    seq: NonNegativeInt
    tx: NonNegativeInt
    run: str
    episode: int
    step: int
    time: float


class Header(TypedDict):
    """The common fields but `seq`, shared by every event of one transaction."""

    tx: int
    run: str
    episode: int
    step: int
    time: float


class Transfer(EventBase):
    """A money-moving event: `amount` units leave `src` and arrive at `dst`."""

    src: str
    dst: str
    amount: Units


class RunStart(EventBase):
    """Opens a run: the seed and the full configuration (JSON) that produced it."""

    kind: Literal["run_start"] = "run_start"
    seed: int
    config: str


class Open(EventBase):
    """Opens an account; no money may move to or from an account before it is opened."""

    kind: Literal["open"] = "open"
    account: str


class EpisodeStart(EventBase):
    """Starts an episode of `task` settled by `mechanism` with discount `gamma`, at `state`
    (which the task observed as `obs`, if its states are not their own record)."""

    kind: Literal["episode_start"] = "episode_start"
    task: str
    mechanism: str
    cloned: bool
    gamma: float
    state: int
    obs: Observation | None = None


class Bid(EventBase):
    """Bidder `account` (running primitive `primitive`) bids `amount` units for `state`.

    Where bids are limited by wealth, `cap` is the budget in force when it bid, and the bid
    is at most the cap; without a budget (a run without an economy) the cap is None.
    """

    kind: Literal["bid"] = "bid"
    account: str
    primitive: int
    state: int
    amount: Units
    cap: Units | None = None

    @model_validator(mode="after")
    def _within_cap(self) -> Bid:
        if self.cap is not None and self.amount > self.cap:
            raise ValueError(f"bid {self.amount} is over its cap {self.cap}")
        return self


class Allocate(EventBase):
    """The auction for `state` is won by `account` with its bid `amount`."""

    kind: Literal["allocate"] = "allocate"
    account: str
    primitive: int
    state: int
    amount: Units


class Pay(Transfer):
    """The winner (`src`) pays the price of the auction to the seller (`dst`)."""

    kind: Literal["pay"] = "pay"


class Mint(Transfer):
    """Credit the mechanism creates: the auctioneer (`src`) credits the seller (`dst`)."""

    kind: Literal["mint"] = "mint"


class Transform(EventBase):
    """The winner's primitive transforms `state` into `next_state`, taking `duration` time;
    `obs` is what the task observed of `next_state`, if its states are not their own record."""

    kind: Literal["transform"] = "transform"
    account: str
    primitive: int
    state: int
    next_state: int
    duration: float
    done: bool
    obs: Observation | None = None


class Reward(Transfer):
    """The environment's reward for the winner's transformation.

    A positive reward flows `environment -> winner`; a negative one (a penalty) flows
    `winner -> environment`. Amounts are never negative; direction carries the sign.
    """

    kind: Literal["reward"] = "reward"


class Order(EventBase):
    """Control variant: agent `account` (number `primitive`) orders control `control`, the
    `action`-th of its discretised control set, for the current step."""

    kind: Literal["order"] = "order"
    account: str
    primitive: int
    action: int
    control: float


class Transition(EventBase):
    """Control variant: the system moves from state `x` to `next_x` under the joint
    `controls` (one per agent, in agent order); addressed to `system`, public to all."""

    kind: Literal["transition"] = "transition"
    account: str
    x: list[float]
    controls: list[float]
    next_x: list[float]
    done: bool


class EpisodeEnd(EventBase):
    """Ends an episode after `steps` auctions with undiscounted return `episode_return`."""

    kind: Literal["episode_end"] = "episode_end"
    steps: int
    episode_return: int


class Balance(EventBase):
    """A statement of `account`'s balance as the producer held it live at this point.

    The audit checks that a replay of every earlier event gives the same number.
    """

    kind: Literal["balance"] = "balance"
    account: str
    amount: SignedUnits


class Endow(Transfer):
    """Funds a new account, opened in the same transaction: from the `environment` for a
    founding account, from its parent for a child. Besides payments and rewards, the only
    way money enters an account."""

    lifecycle: ClassVar[bool] = True
    kind: Literal["endow"] = "endow"


class Rent(Transfer):
    """An account (`src`) pays rent or tax to the `treasury` (`dst`)."""

    lifecycle: ClassVar[bool] = True
    kind: Literal["rent"] = "rent"


class Liquidate(Transfer):
    """Settles an account closed later in the same transaction: its remaining wealth goes
    from it (`src`) to the treasury or a creditor (`dst`); a debt (a negative balance) is
    covered the other way, from the treasury or creditor (`src`) to it (`dst`)."""

    lifecycle: ClassVar[bool] = True
    kind: Literal["liquidate"] = "liquidate"


class Dividend(Transfer):
    """A child (`src`) pays its parent (`dst`), the account that endowed it, a share of its
    profits."""

    lifecycle: ClassVar[bool] = True
    kind: Literal["dividend"] = "dividend"


class Close(EventBase):
    """Closes `account` for good (`reason`: "bankrupt", "idle", ...). Its balance must be
    exactly 0 (liquidate it first); after it, the account never acts or receives again."""

    lifecycle: ClassVar[bool] = True
    kind: Literal["close"] = "close"
    account: str
    reason: str


class RunEnd(EventBase):
    """Closes a run; the `Balance` statements of the same transaction follow it."""

    kind: Literal["run_end"] = "run_end"
    episodes: int


Event = Annotated[
    RunStart
    | Open
    | EpisodeStart
    | Bid
    | Allocate
    | Pay
    | Mint
    | Transform
    | Reward
    | Order
    | Transition
    | EpisodeEnd
    | Balance
    | RunEnd
    | Endow
    | Rent
    | Liquidate
    | Close
    | Dividend,
    Field(discriminator="kind"),
]
"""Every kind, in one list; new kinds go last, so the older ones keep their batch codes."""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_TYPES: tuple[type[EventBase], ...] = get_args(get_args(Event)[0])
"""The kinds of `Event`, in its order (a kind's batch code is its place here)."""
KIND: dict[type[EventBase], str] = {cls: cls.model_fields["kind"].default for cls in EVENT_TYPES}
"""Each model's `kind` tag."""
TRANSFER_KINDS: frozenset[str] = frozenset(
    KIND[cls] for cls in EVENT_TYPES if issubclass(cls, Transfer)
)
"""The kinds that move money; each is a `Transfer`."""
LIFECYCLE_KINDS: frozenset[str] = frozenset(KIND[cls] for cls in EVENT_TYPES if cls.lifecycle)
"""The kinds of an economy where wealth matters: an account's life besides auctions."""
AUCTION_KINDS: frozenset[str] = TRANSFER_KINDS - LIFECYCLE_KINDS
"""The transfers an auction (or a control step) makes; the others are lifecycle transfers."""


def accounts_of(event: EventBase) -> tuple[str, ...]:
    """The accounts an event is addressed to (a bidder, a payer, a payee), each once."""
    d = event.__dict__
    return tuple(dict.fromkeys(d[k] for k in ("account", "src", "dst") if d.get(k) is not None))


FIELDS: dict[type[EventBase], tuple[str, ...]] = {
    cls: tuple(f for f in cls.model_fields if f != "kind") for cls in EVENT_TYPES
}
"""Each kind's fields in record order: the six common fields first, then its own."""
