"""List RPCs: filter, order and keyset pages over the data layer."""

from __future__ import annotations

from typing import Any

from tether.server import errors
from tether.server.db.base import Database, Row


class Lister:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def namespaces(self, page_size: int, page_token: str) -> tuple[list[Row], str]:
        raise errors.unimplemented("ListNamespaces", "listing is being built")

    async def participants(self, namespace: str, request: Any) -> tuple[list[Row], str]:
        raise errors.unimplemented("ListParticipants", "listing is being built")

    async def sessions(self, namespace: str, request: Any) -> tuple[list[Row], str]:
        raise errors.unimplemented("ListSessions", "listing is being built")

    async def members(self, namespace: str, session: str, request: Any) -> tuple[list[Row], str]:
        raise errors.unimplemented("ListMembers", "listing is being built")
