"""The one path every event takes: into the ledger first, then out to subscribers.

A transaction (or a batch of them) the ledger rejects reaches no subscriber, so what
subscribers (balances, learners) see is exactly what the ledger holds. A subscriber that
folds columns registers a batch handler too; any other gets a batch as its transactions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from ledger.batch import EventBatch
from ledger.events import EventBase, accounts_of
from ledger.store import Ledger
from ledger.transaction import Transaction, as_transaction

TxHandler = Callable[[Transaction], None]
EventHandler = Callable[[EventBase], None]
BatchHandler = Callable[[EventBatch], None]


class Bus:
    """Publishes transactions to the ledger and then to subscribers."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._tx_handlers: list[tuple[TxHandler, BatchHandler | None]] = []
        self._by_account: defaultdict[str, list[EventHandler]] = defaultdict(list)

    def subscribe_all(self, handler: TxHandler, batches: BatchHandler | None = None) -> None:
        """Call `handler` with every committed transaction; with `batches`, call that with
        every committed batch instead of `handler` with each of its transactions."""
        self._tx_handlers.append((handler, batches))

    def subscribe(self, account: str, handler: EventHandler) -> None:
        """Call `handler` with every event addressed to `account` (bids, payoffs, ...)."""
        self._by_account[account].append(handler)

    def publish(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Append `tx` to the ledger (which may reject it whole), then deliver it."""
        tx = as_transaction(tx)
        self.ledger.append(tx)
        for handle, _ in self._tx_handlers:
            handle(tx)
        self._deliver_to_accounts(tx)

    def publish_batch(self, batch: EventBatch) -> None:
        """Append a batch of whole transactions (taken or rejected whole), then deliver it."""
        self.ledger.append_batch(batch)
        txs = None
        for handle, handle_batch in self._tx_handlers:
            if handle_batch is not None:
                handle_batch(batch)
                continue
            txs = txs if txs is not None else batch.transactions()
            for tx in txs:
                handle(tx)
        if self._by_account:
            for tx in txs if txs is not None else batch.transactions():
                self._deliver_to_accounts(tx)

    def _deliver_to_accounts(self, tx: Transaction) -> None:
        if self._by_account:
            for e in tx.events():
                for account in accounts_of(e):
                    for on_event in self._by_account.get(account, ()):
                        on_event(e)
