"""Namespace statements."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, exists, select

from tether.server import errors, etags, names
from tether.server.db import idempotency as idempotency_db
from tether.server.db.base import Database, Row
from tether.server.db.schema import namespaces, participants, sessions
from tether.server.errors import Reason, Resource
from tether.server.etags import Etag


async def create(db: Database, values: dict[str, Any], claim: idempotency_db.Claim | None) -> Row:
    """Insert a namespace, claiming the request id (if any) in the same transaction."""
    stmt = db.insert(namespaces).values(values).on_conflict_do_nothing().returning(namespaces)
    name = names.namespace_name(values["namespace"])
    async with db.transaction() as conn:
        row: Row | None = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise errors.already_exists(Resource.NAMESPACE, name)
        await conn.run_sync(idempotency_db.record, claim, name)
    return row


async def get(db: Database, namespace: str) -> Row:
    async with db.read() as conn:
        row = (
            (await conn.execute(select(namespaces).where(namespaces.c.namespace == namespace)))
            .mappings()
            .first()
        )
    if row is None:
        raise errors.not_found(Resource.NAMESPACE, names.namespace_name(namespace))
    return row


async def delete_namespace(
    db: Database, namespace: str, *, force: bool, expected: Etag | None = None
) -> None:
    """Delete for good, with everything in it; without `force` only an empty
    namespace (the emptiness test is part of the DELETE statement)."""
    conditions = [namespaces.c.namespace == namespace]
    if not force:
        conditions += [
            ~exists().where(participants.c.namespace == namespace),
            ~exists().where(sessions.c.namespace == namespace),
        ]
    etag_condition = etags.condition(namespaces.c.uid, namespaces.c.version, expected)
    if etag_condition is not None:
        conditions.append(etag_condition)
    stmt = delete(namespaces).where(and_(*conditions)).returning(namespaces.c.namespace)
    async with db.transaction() as conn:
        if (await conn.execute(stmt)).first() is not None:
            return
        found = (await conn.execute(select(namespaces).where(namespaces.c.namespace == namespace))).mappings()
        current = found.first()
        if current is None:
            raise errors.not_found(Resource.NAMESPACE, names.namespace_name(namespace))
        etags.check(names.namespace_name(namespace), current, expected)
    raise errors.ApiError(
        Reason.NAMESPACE_NOT_EMPTY,
        f"namespace {names.namespace_name(namespace)!r} still holds participants or sessions; set force",
        metadata={"resource_name": names.namespace_name(namespace)},
    )
