"""Request ids (AIP-155, DESIGN.md "Writes").

A creating call with a `request_id` claims it in the statement (PostgreSQL's hot
creates) or transaction that creates, keeping only the created resource's name. A
retry (after a restart, on another replica, or concurrently: the duplicate waits on
the claim's unique key until the first commits) finds the claim and answers that
resource as it is now. A FindOrCreate call that finds writes nothing: its lookup
reads the claim in the same statement, so a retry of a call that created still
answers `created = true`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, Connection, and_, bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from tether.server import errors
from tether.server.db.base import Database, Row, utcnow
from tether.server.db.schema import UTCDateTime, idempotency
from tether.server.errors import Reason

PRIMARY_KEY = "pk_idempotency"


class Replayed(Exception):  # noqa: N818 (not an error: the outcome of a retry)
    """An earlier call with this request id and payload created `resource`: answer it."""

    def __init__(self, resource: str) -> None:
        super().__init__(resource)
        self.resource = resource


class Unclaimed(Exception):  # noqa: N818 (carries the call's real error)
    """A creating call refused (`error`) after its statement read the claim and found it
    free: no retry of an earlier call, so no need to look again."""

    def __init__(self, error: errors.ApiError) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class Claim:
    """A call's request id: who claims it (`scope`: the namespace, "" for namespaces),
    for which method and payload, and until when."""

    scope: str
    request_id: str
    method: str
    fingerprint: str
    now: datetime
    expire_time: datetime

    def row(self, resource: str, also_created: str | None = None) -> dict[str, Any]:
        return {
            "also_created": also_created or None,
            "namespace": self.scope,
            "request_id": self.request_id,
            "method": self.method,
            "fingerprint": self.fingerprint,
            "resource": resource,
            "create_time": self.now,
            "expire_time": self.expire_time,
        }


def claim_cte(source: str, first: int, *, resource_sql: str | None = None) -> str:
    """SQL (PostgreSQL) of a CTE `claimed` that inserts the claim for the row of CTE
    `source`, from parameters $first .. $first+5 (`claim_args`); none when the first is NULL.
    `resource_sql`: the created resource's name as an expression over `source`, used when
    the resource parameter is NULL (a name known only once the statement runs)."""
    rid, method, print_, resource, now, expire = (f"${i}" for i in range(first, first + 6))
    if resource_sql is not None:
        resource = f"COALESCE({resource}::text, {resource_sql})"
    return (
        "claimed AS (INSERT INTO idempotency (namespace, request_id, method, fingerprint, resource, "
        f"create_time, expire_time) SELECT {source}.namespace, {rid}::varchar, {method}::varchar, "
        f"{print_}::varchar, {resource}::text, {now}::timestamptz, {expire}::timestamptz "
        f"FROM {source} WHERE {rid}::varchar IS NOT NULL)"
    )


def claim_args(claim: Claim | None, resource: str | None) -> list[Any]:
    """The parameters of `claim_cte`."""
    if claim is None:
        return [None] * 6
    return [claim.request_id, claim.method, claim.fingerprint, resource, claim.now, claim.expire_time]


def fingerprint(method: str, request: Message) -> str:
    """SHA-256 of the method and the request without its request_id."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    digest = hashlib.sha256(method.encode())
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def new_claim(scope: str, request: Any, ttl: timedelta) -> Claim | None:
    """The claim of `request` (which has a `request_id` field), or None when it has none."""
    if not request.request_id:
        return None
    method = type(request).__name__.removesuffix("Request")
    now = utcnow()
    return Claim(scope, request.request_id, method, fingerprint(method, request), now, now + ttl)


# A lookup joins the claim (if any) of its call: one statement reads both.
CLAIM_COLUMNS = [
    idempotency.c.resource.label("claim_resource"),
    idempotency.c.method.label("claim_method"),
    idempotency.c.fingerprint.label("claim_fingerprint"),
]
CLAIM_JOIN_ON: ColumnElement[bool] = and_(
    idempotency.c.namespace == bindparam("c_scope"),
    idempotency.c.request_id == bindparam("c_request_id"),
    idempotency.c.expire_time > bindparam("c_now", type_=UTCDateTime()),
)


# The same join in hand-written SQL (PostgreSQL's hot lookups): the namespace is $1.
CLAIM_SELECT_SQL = (
    "i.resource AS claim_resource, i.method AS claim_method, i.fingerprint AS claim_fingerprint"
)


def claim_join_sql(request_id: str, now: str) -> str:
    """`LEFT JOIN idempotency i` on the call's claim, given the placeholders of its
    request id and clock (`claim_params`' values)."""
    on = f"i.namespace = $1 AND i.request_id = {request_id} AND i.expire_time > {now}"
    return f"LEFT JOIN idempotency i ON {on}"


def claim_params(scope: str, claim: Claim | None) -> dict[str, Any]:
    """The parameters of `CLAIM_JOIN_ON` (no request id: a NULL that matches nothing)."""
    if claim is None:
        return {"c_scope": scope, "c_request_id": None, "c_now": None}
    return {"c_scope": claim.scope, "c_request_id": claim.request_id, "c_now": claim.now}


def claimed_by(claim: Claim | None, row: Row) -> str | None:
    """What a lookup's joined claim says: None when the request id is not claimed;
    the resource an identical earlier call created; REQUEST_ID_CONFLICT when the
    request id was used for another request."""
    if claim is None or row["claim_resource"] is None:
        return None
    if row["claim_method"] != claim.method or row["claim_fingerprint"] != claim.fingerprint:
        raise conflict(claim)
    resource: str = row["claim_resource"]
    return resource


def conflict(claim: Claim) -> errors.ApiError:
    return errors.ApiError(
        Reason.REQUEST_ID_CONFLICT,
        f"request_id {claim.request_id!r} was already used for a different request",
        metadata={"request_id": claim.request_id},
    )


def _claim_upsert(dialect_insert: Any) -> Any:
    """INSERT the claim; take over an expired one (not yet swept); else no row back."""
    insert = dialect_insert(idempotency)
    return insert.on_conflict_do_update(
        index_elements=[idempotency.c.namespace, idempotency.c.request_id],
        set_={
            k: insert.excluded[k]
            for k in ("method", "fingerprint", "resource", "also_created", "create_time", "expire_time")
        },
        where=idempotency.c.expire_time <= bindparam("c_now", type_=UTCDateTime()),
    ).returning(idempotency.c.request_id)


_CLAIM_UPSERT = {"sqlite": _claim_upsert(sqlite.insert), "postgresql": _claim_upsert(postgresql.insert)}


def record(conn: Connection, claim: Claim | None, resource: str, *, also_created: str | None = None) -> None:
    """Claim the request id for `resource` in `conn`'s transaction. Taken already:
    Replayed or REQUEST_ID_CONFLICT (the caller's transaction then rolls back, its
    effect with it). An expired claim the sweeper has not purged yet is taken over.
    `also_created`: what else the call created (comma-separated response flags)."""
    if claim is None:
        return
    params = {**claim.row(resource, also_created), "c_now": claim.now}
    if conn.execute(_CLAIM_UPSERT[conn.dialect.name], params).first() is None:
        raise_if_taken(conn, claim)


def taken(conn: Connection, claim: Claim) -> str | None:
    """The resource an identical earlier call created under this request id (unexpired),
    None when it is unclaimed; REQUEST_ID_CONFLICT when it was used for another request."""
    stmt = select(*CLAIM_COLUMNS).where(CLAIM_JOIN_ON)
    row = conn.execute(stmt, claim_params(claim.scope, claim)).mappings().first()
    return None if row is None else claimed_by(claim, row)


def also_created(conn: Connection, claim: Claim) -> str | None:
    """The `also_created` flags recorded with an unexpired claim (None when there are none)."""
    stmt = select(idempotency.c.also_created).where(CLAIM_JOIN_ON)
    flags: str | None = conn.execute(stmt, claim_params(claim.scope, claim)).scalar()
    return flags


def raise_if_taken(conn: Connection, claim: Claim | None) -> None:
    """Replayed or REQUEST_ID_CONFLICT when the request id is claimed (unexpired)."""
    if claim is None:
        return
    resource = taken(conn, claim)
    if resource is not None:
        raise Replayed(resource)


async def drop_if_expired(db: Database, claim: Claim) -> bool:
    """Delete the claim's row if it has expired (the sweeper had not got to it): True
    when one was deleted, so the caller may claim again."""
    key = (idempotency.c.namespace == claim.scope) & (idempotency.c.request_id == claim.request_id)
    stmt = (
        delete(idempotency)
        .where(key, idempotency.c.expire_time <= claim.now)
        .returning(idempotency.c.request_id)
    )
    async with db.statement() as conn:
        return (await conn.execute(stmt)).first() is not None


async def fetch_claiming(db: Database, claim: Claim | None, sql: str, *args: Any) -> Row | None:
    """Run a hot statement (PostgreSQL) whose `claim_cte` claims `claim`: its row, or None.
    The request id held by an earlier call: Replayed or REQUEST_ID_CONFLICT; held by an
    expired claim the sweeper has not purged yet: that one is dropped and the statement
    run again. Any other error raises as it is."""
    assert db.hot is not None
    try:
        return await db.hot.fetchrow(sql, *args)
    except asyncpg.IntegrityConstraintViolationError as exc:
        if claim is None or not is_claim_collision(exc):
            raise
    await db.query(raise_if_taken, claim)
    await drop_if_expired(db, claim)
    return await fetch_claiming(db, claim, sql, *args)


def is_claim_collision(error: Exception) -> bool:
    """Whether a failed statement collided on the claim's primary key."""
    orig = getattr(error, "orig", error)
    return (
        getattr(orig, "sqlstate", None) == "23505" and getattr(orig, "constraint_name", None) == PRIMARY_KEY
    )
