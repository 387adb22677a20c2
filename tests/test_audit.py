"""Each audit rule, on a real ledger with one stored fact falsified: the audit names the rule."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import append_all, control_history, lifecycle_history

from agents.fixed import make_bidder
from agents.fixed_control import RandomPolicy
from ledger.events import TREASURY
from ledger.store import MemoryLedger
from market.audit import audit_frame
from market.control import ControlRunConfig, simulate_control
from market.run import RunConfig, simulate
from market.society import Society
from market.tasks import make_task

pytestmark = pytest.mark.usefixtures("small_chunks")


def ledger_frame(mechanism: str) -> pl.DataFrame:
    """The stored events of a small random-bidder Chain run under `mechanism`."""
    config = RunConfig(task="chain", mechanism=mechanism, bidder="random", episodes=6, seed=5)
    task = make_task("chain")
    policy = make_bidder("random", task, Society.of(task), 0.99, np.random.default_rng(5))
    ledger = MemoryLedger()
    simulate(config, ledger, policy)
    return ledger.scan().collect()


@pytest.fixture(scope="module")
def ccv() -> pl.DataFrame:
    return ledger_frame("ccv")


@pytest.fixture(scope="module")
def vickrey() -> pl.DataFrame:
    return ledger_frame("v")


def first_seq(df: pl.DataFrame, kind: str, where: pl.Expr | None = None) -> int:
    """The seq of the first `kind` event matching `where`."""
    match = pl.col("kind") == kind
    return int(df.filter(match if where is None else match & where)["seq"][0])


def falsify(df: pl.DataFrame, seq: int, **values: object) -> pl.DataFrame:
    """`df` with the event `seq` given other field values."""
    return df.with_columns(
        pl.when(pl.col("seq") == seq).then(pl.lit(v)).otherwise(pl.col(k)).alias(k)
        for k, v in values.items()
    )


def rule_broken(df: pl.DataFrame) -> tuple[str, int]:
    """(rule, seq) of the audit's first violation."""
    report = audit_frame(df)
    assert report.violation is not None
    return report.violation.rule, report.violation.seq


def test_clean_runs_audit_clean(ccv: pl.DataFrame, vickrey: pl.DataFrame) -> None:
    """The unfalsified ledgers break no rule (so every failure below is the falsification's)."""
    assert audit_frame(ccv).ok and audit_frame(vickrey).ok
    assert audit_frame(vickrey).minted > 0


def test_a_loser_recorded_as_winner_breaks_allocation(ccv: pl.DataFrame) -> None:
    """The allocation must be the argmax of the recorded bids."""
    seq = first_seq(ccv, "allocate")
    tx = ccv.filter(pl.col("seq") == seq)["tx"][0]
    winner = ccv.filter(pl.col("seq") == seq)["account"][0]
    loser = ccv.filter(
        (pl.col("tx") == tx) & (pl.col("kind") == "bid") & (pl.col("account") != winner)
    )["account"][0]
    assert rule_broken(falsify(ccv, seq, account=loser)) == ("allocation", seq)


@pytest.mark.parametrize("delta", [1, -1])
def test_a_winner_recorded_off_its_bid_breaks_allocation(ccv: pl.DataFrame, delta: int) -> None:
    """The winner is allocated at its own bid, the highest: any other amount is caught there."""
    seq = first_seq(ccv, "allocate")
    won = int(ccv.filter(pl.col("seq") == seq)["amount"][0])
    assert rule_broken(falsify(ccv, seq, amount=won + delta)) == ("allocation", seq)


def test_a_wrong_price_breaks_price(ccv: pl.DataFrame) -> None:
    """Under ccv the winner pays exactly the second-highest bid."""
    seq = first_seq(ccv, "pay")
    amount = int(ccv.filter(pl.col("seq") == seq)["amount"][0])
    assert rule_broken(falsify(ccv, seq, amount=amount + 1)) == ("price", seq)


def test_a_payment_from_someone_else_breaks_payer(ccv: pl.DataFrame) -> None:
    """The payer is the winner."""
    seq = first_seq(ccv, "pay")
    assert rule_broken(falsify(ccv, seq, src="auctioneer")) == ("payer", seq)


def test_a_payment_to_the_wrong_seller_breaks_seller(ccv: pl.DataFrame) -> None:
    """After step 0 the payee is the previous winner, never the environment."""
    seq = first_seq(ccv, "pay", pl.col("step") > 0)
    assert rule_broken(falsify(ccv, seq, dst="environment")) == ("seller", seq)


def test_a_wrong_mint_breaks_mint(vickrey: pl.DataFrame) -> None:
    """Vickrey mints exactly b1 - b2 to the seller."""
    seq = first_seq(vickrey, "mint")
    amount = int(vickrey.filter(pl.col("seq") == seq)["amount"][0])
    assert rule_broken(falsify(vickrey, seq, amount=amount + 1)) == ("mint", seq)


def test_a_mint_under_ccv_breaks_mint(ccv: pl.DataFrame) -> None:
    """CCV creates no credit: a mint from the auctioneer to the seller is caught at the mint."""
    seq = first_seq(ccv, "transform", pl.col("step") > 0)
    tx = int(ccv.filter(pl.col("seq") == seq)["tx"][0])
    seller = ccv.filter((pl.col("tx") == tx) & (pl.col("kind") == "pay"))["dst"][0]
    minted = falsify(ccv, seq, kind="mint", src="auctioneer", dst=seller, amount=1)
    assert rule_broken(minted) == ("mint", seq)


def test_a_reward_to_a_loser_breaks_reward(ccv: pl.DataFrame) -> None:
    """The reward goes between the environment and the winner."""
    seq = first_seq(ccv, "reward")
    assert rule_broken(falsify(ccv, seq, dst="auctioneer")) == ("reward", seq)


def test_a_removed_event_breaks_sequence(ccv: pl.DataFrame) -> None:
    """Sequence numbers are contiguous from 0."""
    seq = first_seq(ccv, "transform")
    assert rule_broken(ccv.filter(pl.col("seq") != seq)) == ("sequence", seq + 1)


def test_a_transaction_without_its_first_event_breaks_sequence(ccv: pl.DataFrame) -> None:
    """A transaction runs contiguously from its first event: that one filed elsewhere is caught."""
    seq = first_seq(ccv, "episode_start", pl.col("episode") == 1)
    assert int(ccv.filter(pl.col("seq") == seq)["tx"][0]) == seq  # it starts its transaction
    earlier = int(ccv.filter(pl.col("tx") < seq).select(pl.col("tx").max()).item())
    assert rule_broken(falsify(ccv, seq, tx=earlier)) == ("sequence", seq + 1)


def test_an_auction_stepping_back_in_its_episode_breaks_sequence(ccv: pl.DataFrame) -> None:
    """An episode's auctions are steps 0, 1, 2, ... in order: step 3 recorded as 1 is caught."""
    seq = first_seq(ccv, "bid", (pl.col("episode") == 0) & (pl.col("step") == 3))
    tx = int(ccv.filter(pl.col("seq") == seq)["tx"][0])
    back = pl.when(pl.col("tx") == tx).then(1).otherwise(pl.col("step")).alias("step")
    assert rule_broken(ccv.with_columns(back)) == ("sequence", seq)


def test_a_second_payment_in_one_auction_breaks_sequence(ccv: pl.DataFrame) -> None:
    """One allocate, pay, mint and reward per auction, even when every number is renumbered."""
    seq = first_seq(ccv, "pay")
    tx = int(ccv.filter(pl.col("seq") == seq)["tx"][0])
    copy = ccv.filter(pl.col("seq") == seq)
    df = pl.concat([ccv.filter(pl.col("seq") <= seq), copy, ccv.filter(pl.col("seq") > seq)])
    df = df.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        pl.when(pl.col("tx") > tx).then(pl.col("tx") + 1).otherwise(pl.col("tx")).alias("tx"),
    )
    assert rule_broken(df)[0] == "sequence"


def test_a_transfer_from_an_unopened_account_breaks_balance(ccv: pl.DataFrame) -> None:
    """Money moves only between accounts opened before it."""
    seq = first_seq(ccv, "reward")
    assert rule_broken(falsify(ccv, seq, src="mallory")) == ("balance", seq)


def test_a_negative_amount_breaks_balance(ccv: pl.DataFrame) -> None:
    """Amounts are never negative (direction carries the sign), even moving the same money."""
    seq = first_seq(ccv, "reward", pl.col("amount") > 0)
    src, dst, amount = ccv.filter(pl.col("seq") == seq).select("src", "dst", "amount").row(0)
    reversed_ = falsify(ccv, seq, src=dst, dst=src, amount=-amount)
    assert rule_broken(reversed_) == ("balance", seq)


def test_a_transfer_without_an_amount_breaks_balance(ccv: pl.DataFrame) -> None:
    """Every transfer states a whole amount: a reward of none (for 0) is caught at it."""
    seq = first_seq(ccv, "reward", pl.col("amount") == 0)
    assert rule_broken(falsify(ccv, seq, amount=None)) == ("balance", seq)


def test_a_transfer_to_itself_other_than_a_pay_breaks_balance() -> None:
    """Only a pay may go from an account to itself: rent from the treasury to itself is not."""
    df = lifecycle_frame()
    seq = first_seq(df, "rent")
    assert rule_broken(falsify(df, seq, src=TREASURY)) == ("balance", seq)


def test_money_outside_an_auction_breaks_auction_only(ccv: pl.DataFrame) -> None:
    """Money moves only inside auction transactions."""
    seq = first_seq(ccv, "balance")
    df = falsify(ccv, seq, kind="reward", src="environment", dst="auctioneer", amount=1)
    assert rule_broken(df)[0] == "auction-only"


def test_a_false_closing_statement_breaks_closing(ccv: pl.DataFrame) -> None:
    """Each balance statement equals the replay of everything before it."""
    seq = first_seq(ccv, "balance", pl.col("account") == "R.0")
    amount = int(ccv.filter(pl.col("seq") == seq)["amount"][0])
    assert rule_broken(falsify(ccv, seq, amount=amount + 1)) == ("closing", seq)


def test_an_episode_without_its_start_breaks_sequence(ccv: pl.DataFrame) -> None:
    """Every auction belongs to an opened episode with a recorded mechanism."""
    seq = first_seq(ccv, "episode_start")
    assert rule_broken(falsify(ccv, seq, kind="open", account="x"))[0] == "sequence"


def control_frame() -> pl.DataFrame:
    """The hand-made control-variant history, stored and read back."""
    ledger = MemoryLedger()
    append_all(ledger, control_history())
    return ledger.scan().collect()


def lifecycle_frame() -> pl.DataFrame:
    """The hand-made economy (endowments, rent, a dividend, a bankruptcy), stored and read
    back."""
    ledger = MemoryLedger()
    append_all(ledger, lifecycle_history())
    return ledger.scan().collect()


def test_rewards_in_control_steps_audit_clean() -> None:
    """Rewards paid in a control step (a transaction with a Transition) are allowed."""
    report = audit_frame(control_frame())
    assert report.ok, report.violation


def test_money_outside_a_control_step_breaks_auction_only() -> None:
    """A reward in a transaction with neither an auction nor a transition is still refused."""
    df = control_frame()
    seq = first_seq(df, "transition")
    df = falsify(df, seq, kind="order", control=0.0, action=0, account="alice", primitive=0)
    assert rule_broken(df)[0] == "auction-only"


@pytest.mark.parametrize("delta", [1, -1])
def test_a_run_end_miscounting_its_episodes_breaks_run_end(ccv: pl.DataFrame, delta: int) -> None:
    """A run's end states how many episodes ended in it: exactly the EpisodeEnds since its
    start."""
    seq = first_seq(ccv, "run_end")
    episodes = int(ccv.filter(pl.col("seq") == seq)["episodes"][0])
    assert episodes == ccv.filter(pl.col("kind") == "episode_end").height
    assert rule_broken(falsify(ccv, seq, episodes=episodes + delta)) == ("run-end", seq)


@pytest.mark.parametrize(("field", "delta"), [("episode_return", 1), ("steps", -1)])
def test_an_episode_end_misstating_its_return_or_steps_breaks_episode_end(
    ccv: pl.DataFrame, field: str, delta: int
) -> None:
    """An EpisodeEnd states its episode's return and steps: exactly the signed rewards and
    the auctions before it (results such as returns curves are computed from these)."""
    seq = first_seq(ccv, "episode_end", pl.col("steps") > 1)
    told = int(ccv.filter(pl.col("seq") == seq)[field][0])
    assert rule_broken(falsify(ccv, seq, **{field: told + delta})) == ("episode-end", seq)


def test_a_control_episode_end_misstating_its_return_breaks_episode_end() -> None:
    """In a control step every agent's reward counts toward the episode's return."""
    ledger = MemoryLedger()
    control = ControlRunConfig(task="integrator", agents=2, policy="random", episodes=2)
    simulate_control(control, ledger, RandomPolicy(5, 2, np.random.default_rng(0)))
    df = ledger.scan().collect()
    assert audit_frame(df).ok
    seq = first_seq(df, "episode_end")
    told = int(df.filter(pl.col("seq") == seq)["episode_return"][0])
    assert rule_broken(falsify(df, seq, episode_return=told - 1)) == ("episode-end", seq)


def test_a_transition_in_an_auction_run_does_not_license_money() -> None:
    """A Transition makes a control step only in a control run's episode: the same steps in
    an episode that says it is a CCV auction move money outside any auction."""
    df = control_frame()
    start = first_seq(df, "episode_start")
    reward = first_seq(df, "reward")
    assert rule_broken(falsify(df, start, mechanism="ccv")) == ("auction-only", reward)


def test_a_control_step_mints_nothing() -> None:
    """A control step moves rewards only: a Mint in one is money outside any auction."""
    df = control_frame()
    seq = first_seq(df, "reward")
    minted = falsify(df, seq, kind="mint", src="auctioneer")
    assert rule_broken(minted) == ("auction-only", seq)
