"""The one path every event takes: into the ledger first, then out to subscribers.

A transaction the ledger rejects reaches no subscriber, so what subscribers (balances,
learners) see is exactly what the ledger holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from ledger.events import EventBase, accounts_of
from ledger.store import Ledger
from ledger.transaction import Transaction, as_transaction

TxHandler = Callable[[Transaction], None]
EventHandler = Callable[[EventBase], None]


class Bus:
    """Publishes transactions to the ledger and then to subscribers."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tx_handlers: list[TxHandler] = []
        self._by_account: defaultdict[str, list[EventHandler]] = defaultdict(list)

    def subscribe_all(self, handler: TxHandler) -> None:
        """Call `handler` with every committed transaction."""
        self._tx_handlers.append(handler)

    def subscribe(self, account: str, handler: EventHandler) -> None:
        """Call `handler` with every event addressed to `account` (bids, payoffs, ...)."""
        self._by_account[account].append(handler)

    def publish(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Append `tx` to the ledger (which may reject it whole), then deliver it."""
        tx = as_transaction(tx)
        self.ledger.append(tx)
        for handle in self._tx_handlers:
            handle(tx)
        if self._by_account:
            for e in tx.events():
                for account in accounts_of(e):
                    for on_event in self._by_account.get(account, ()):
                        on_event(e)
