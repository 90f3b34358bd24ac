"""Request ids (AIP-155): claim a request id and record the response, inside
the transaction of the call's effect, so a retry (even after a restart, even on
another replica) gets the first response and concurrent duplicates make one
effect."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from google.protobuf.message import Message
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.server import errors
from tether.server.db.base import Database, utcnow
from tether.server.db.schema import idempotency
from tether.server.errors import Reason


def fingerprint(method: str, request: Message) -> str:
    """SHA-256 of the method and the request without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(method.encode())
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


async def claim(
    db: Database,
    conn: AsyncConnection,
    scope: str,
    request_id: str,
    method: str,
    request_fingerprint: str,
    ttl: timedelta,
) -> bytes | None:
    """Claim `request_id` for this call: None when it is new (or its old record
    expired); the recorded response when this is a repeat. A concurrent
    duplicate waits here (on the row's lock) until the first call commits."""
    now = utcnow()
    values = {
        "namespace": scope,
        "request_id": request_id,
        "method": method,
        "fingerprint": request_fingerprint,
        "response": None,
        "create_time": now,
        "expire_time": now + ttl,
    }
    insert = db.insert(idempotency).values(values)
    stmt = insert.on_conflict_do_update(
        index_elements=[idempotency.c.namespace, idempotency.c.request_id],
        set_={k: insert.excluded[k] for k in values if k not in ("namespace", "request_id")},
        where=idempotency.c.expire_time <= now,
    ).returning(idempotency.c.request_id)
    if (await conn.execute(stmt)).first() is not None:
        return None
    key = (idempotency.c.namespace == scope) & (idempotency.c.request_id == request_id)
    row = (await conn.execute(select(idempotency).where(key))).mappings().one()
    if row["method"] != method or row["fingerprint"] != request_fingerprint or row["response"] is None:
        raise errors.ApiError(
            Reason.REQUEST_ID_CONFLICT,
            f"request_id {request_id!r} was already used for a different request",
            metadata={"request_id": request_id},
        )
    response: bytes = row["response"]
    return response


async def record(conn: AsyncConnection, scope: str, request_id: str, response: bytes) -> None:
    """Store the response of a claimed request id (same transaction as the effect)."""
    key = (idempotency.c.namespace == scope) & (idempotency.c.request_id == request_id)
    await conn.execute(update(idempotency).where(key).values(response=response))
