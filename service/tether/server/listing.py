"""List RPCs: AIP-160 filter, AIP-132 order and keyset pages over the data layer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from sqlalchemy import Select, Table, select

from tether.server.db import members as member_db
from tether.server.db import namespaces as namespace_db
from tether.server.db import sessions as session_db
from tether.server.db.base import Database, Row
from tether.server.db.schema import events, members, namespaces, participants, sessions
from tether.server.query import (
    EVENT_FILTER_FIELDS,
    EVENT_ORDER_FIELDS,
    PARTICIPANT_FILTER_FIELDS,
    PARTICIPANT_ORDER_FIELDS,
    SESSION_FILTER_FIELDS,
    SESSION_ORDER_FIELDS,
    FilterField,
    OrderFields,
    PageRequest,
    compile_filter,
    next_page,
    page_request,
    paginate,
    parse_order_by,
)
from tether.v1 import session_service_pb2 as pb

# Namespaces by id; members in join order (participant id breaks ties).
NAMESPACE_ORDER = OrderFields(
    columns={"name": namespaces.c.namespace}, tiebreaker=namespaces.c.uid, default="name asc"
)
MEMBER_ORDER = OrderFields(
    columns={"join_time": members.c.join_time}, tiebreaker=members.c.participant, default="join_time asc"
)


async def _nothing() -> None:
    return None


class Lister:
    """Runs one page query per List call (plus an existence check of the parent)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _page(
        self,
        stmt: Select[tuple[object, ...]],
        page: PageRequest,
        parent_exists: Callable[[], Awaitable[object]],
    ) -> tuple[list[Row], str]:
        async with self._db.read() as conn:
            rows: Sequence[Row] = (await conn.execute(paginate(stmt, page))).mappings().all()
        if not rows:
            await parent_exists()  # an empty page of a missing parent is NOT_FOUND
        rows, token = next_page(rows, page)
        return list(rows), token

    async def namespaces(self, page_size: int, page_token: str) -> tuple[list[Row], str]:
        ordering = parse_order_by("", NAMESPACE_ORDER)
        page = page_request(
            page_size=page_size, page_token=page_token, ordering=ordering, binding=("namespaces",)
        )
        return await self._page(select(namespaces), page, _nothing)

    async def participants(
        self, namespace: str, request: pb.ListParticipantsRequest
    ) -> tuple[list[Row], str]:
        return await self._soft_deletable(
            participants, PARTICIPANT_FILTER_FIELDS, PARTICIPANT_ORDER_FIELDS, namespace, request
        )

    async def sessions(self, namespace: str, request: pb.ListSessionsRequest) -> tuple[list[Row], str]:
        return await self._soft_deletable(
            sessions, SESSION_FILTER_FIELDS, SESSION_ORDER_FIELDS, namespace, request
        )

    async def _soft_deletable(
        self,
        table: Table,
        filter_fields: Mapping[str, FilterField],
        order_fields: OrderFields,
        namespace: str,
        request: pb.ListParticipantsRequest | pb.ListSessionsRequest,
    ) -> tuple[list[Row], str]:
        """A page of a namespace's participants or sessions: filtered, ordered,
        soft-deleted rows hidden unless `show_deleted`."""
        ordering = parse_order_by(request.order_by, order_fields)
        where = compile_filter(request.filter, filter_fields, namespace=namespace)
        page = page_request(
            page_size=request.page_size,
            page_token=request.page_token,
            ordering=ordering,
            binding=(request.parent, request.filter, str(request.show_deleted)),
        )
        stmt = select(table).where(table.c.namespace == namespace)
        if not request.show_deleted:
            stmt = stmt.where(table.c.delete_time.is_(None))
        if where is not None:
            stmt = stmt.where(where)
        return await self._page(stmt, page, lambda: namespace_db.get(self._db, namespace))

    async def members(
        self, namespace: str, session: str, request: pb.ListMembersRequest
    ) -> tuple[list[Row], str]:
        ordering = parse_order_by("", MEMBER_ORDER)
        page = page_request(
            page_size=request.page_size,
            page_token=request.page_token,
            ordering=ordering,
            binding=(request.parent,),
        )
        stmt = member_db.member_select().where(members.c.namespace == namespace, members.c.session == session)
        return await self._page(stmt, page, lambda: session_db.get(self._db, namespace, session))

    async def events(
        self, namespace: str, session: str, request: pb.ListEventsRequest
    ) -> tuple[list[Row], str]:
        """A page of a session's events by sequence (also of a soft-deleted session): the
        primary key's range scan, however many events the namespace holds."""
        ordering = parse_order_by(request.order_by, EVENT_ORDER_FIELDS)
        where = compile_filter(request.filter, EVENT_FILTER_FIELDS, namespace=namespace)
        page = page_request(
            page_size=request.page_size,
            page_token=request.page_token,
            ordering=ordering,
            binding=(request.parent, request.filter),
        )
        stmt = select(events).where(events.c.namespace == namespace, events.c.session == session)
        if where is not None:
            stmt = stmt.where(where)
        return await self._page(stmt, page, lambda: session_db.get(self._db, namespace, session))
