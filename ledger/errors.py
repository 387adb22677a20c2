"""Typed errors of the ledger; each message is one line a user can act on."""


class LedgerError(Exception):
    """Base of every error the ledger raises."""


class SequenceError(LedgerError):
    """A transaction's sequence numbers are duplicate, out of order or not contiguous."""


class UnbalancedTransaction(LedgerError):
    """A transaction moves money that is not an exact non-negative integer transfer."""


class InvalidEvent(LedgerError):
    """An event breaks its own model's rules (a wrong type, a negative bid, ...)."""


class UnknownAccount(LedgerError):
    """Money moves to or from an account that has not been opened."""


class AccountClosed(LedgerError):
    """An event is addressed to an account that was closed (it may never act again)."""


class ClosingBalance(LedgerError):
    """An account is closed while its balance is not exactly 0 (liquidate it first)."""


class CorruptLedger(LedgerError):
    """A stored ledger cannot be read, or its committed contents fail their hashes."""

    def __init__(self, message: str, seq: int = 0) -> None:
        super().__init__(message)
        self.seq = seq
        """The first sequence number the damage touches (0 when unknown)."""
