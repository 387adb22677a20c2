"""Settings a ledger records: new ones are left out while unset, so old ledgers still verify."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)


class Recorded(BaseModel):
    """A run's configuration as its RunStart records it (and its run id hashes). Settings
    added since ledgers were first written (`added`) are left out while unset, so a
    configuration that does not use them dumps (and hashes) as it always did."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    added: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        for name in self.added:
            if isinstance(data, dict) and data.get(name) is None:
                data.pop(name, None)
        return data
