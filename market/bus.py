"""The one path every event takes: into the ledger first, then out to subscribers.

A transaction (or a batch of them) the ledger rejects reaches no subscriber, so what
subscribers (balances, learners) see is exactly what the ledger holds. A subscriber that
folds columns registers a batch handler too; any other gets a batch as its transactions.
The same holds per account: a batch handler gets a batch's rows addressed to its account.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from ledger.batch import EventBatch, of_transactions
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
        self._by_account: defaultdict[
            str, list[tuple[EventHandler | None, BatchHandler | None]]
        ] = defaultdict(list)
        self._rows_only: list[tuple[str, BatchHandler]] = []
        """Account subscribers with a batch handler alone (they get transactions as batches)."""

    def subscribe_all(self, handler: TxHandler, batches: BatchHandler | None = None) -> None:
        """Call `handler` with every committed transaction; with `batches`, call that with
        every committed batch instead of `handler` with each of its transactions."""
        self._tx_handlers.append((handler, batches))

    def subscribe(
        self,
        account: str,
        handler: EventHandler | None = None,
        batches: BatchHandler | None = None,
    ) -> None:
        """Call `handler` with every event addressed to `account` (bids, payoffs, ...); with
        `batches`, call that with the rows of every committed batch addressed to `account`
        (`EventBatch.addressed_to`, possibly none) instead of `handler` with each of them.
        A subscriber with `batches` alone gets a single transaction as a one-transaction
        batch."""
        if handler is None and batches is None:
            raise ValueError("subscribe needs an event handler, a batch handler or both")
        self._by_account[account].append((handler, batches))
        if handler is None and batches is not None:
            self._rows_only.append((account, batches))

    def publish(self, tx: Transaction | Sequence[EventBase]) -> None:
        """Append `tx` to the ledger (which may reject it whole), then deliver it."""
        tx = as_transaction(tx)
        self.ledger.append(tx)
        for handle, _ in self._tx_handlers:
            handle(tx)
        self._deliver_to_accounts(tx, batched=False)
        if self._rows_only:
            as_batch = of_transactions([tx])
            for account, handle_rows in self._rows_only:
                rows = as_batch.addressed_to(account)
                if len(rows):
                    handle_rows(rows)

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
        by_events = False
        for account, handlers in self._by_account.items():
            rows = None
            for _, handle_rows in handlers:
                if handle_rows is None:
                    by_events = True
                    continue
                rows = rows if rows is not None else batch.addressed_to(account)
                handle_rows(rows)
        if by_events:
            for tx in txs if txs is not None else batch.transactions():
                self._deliver_to_accounts(tx, batched=True)

    def _deliver_to_accounts(self, tx: Transaction, *, batched: bool) -> None:
        """Deliver `tx`'s events to the subscribers of their accounts (when the transaction
        came in a batch, only to those without a batch handler)."""
        if self._by_account:
            for e in tx.events():
                for account in accounts_of(e):
                    for on_event, handle_rows in self._by_account.get(account, ()):
                        if on_event is not None and not (batched and handle_rows is not None):
                            on_event(e)
