"""List queries: AIP-160 filters, AIP-132 ordering and keyset pagination (AIP-158).

ListSessions, for example::

    ordering = parse_order_by(request.order_by, SESSION_ORDER_FIELDS)
    where = compile_filter(request.filter, SESSION_FILTER_FIELDS, namespace=namespace)
    page = page_request(
        page_size=request.page_size,
        page_token=request.page_token,
        ordering=ordering,
        binding=(request.parent, request.filter, str(request.show_deleted)),
    )
    stmt = select(sessions).where(sessions.c.namespace == namespace)
    if where is not None:
        stmt = stmt.where(where)
    rows = (await conn.execute(paginate(stmt, page))).mappings().all()
    rows, next_page_token = next_page(rows, page)
"""

from tether.server.query.filter import (
    EVENT_FILTER_FIELDS,
    PARTICIPANT_FILTER_FIELDS,
    SESSION_FILTER_FIELDS,
    FieldKind,
    FilterField,
    compile_filter,
)
from tether.server.query.ordering import (
    EVENT_ORDER_FIELDS,
    PARTICIPANT_ORDER_FIELDS,
    SESSION_ORDER_FIELDS,
    OrderFields,
    Ordering,
    OrderKey,
    parse_order_by,
)
from tether.server.query.pagination import PageRequest, next_page, page_request, paginate

__all__ = [
    "EVENT_FILTER_FIELDS",
    "EVENT_ORDER_FIELDS",
    "PARTICIPANT_FILTER_FIELDS",
    "PARTICIPANT_ORDER_FIELDS",
    "SESSION_FILTER_FIELDS",
    "SESSION_ORDER_FIELDS",
    "FieldKind",
    "FilterField",
    "OrderFields",
    "OrderKey",
    "Ordering",
    "PageRequest",
    "compile_filter",
    "next_page",
    "page_request",
    "paginate",
    "parse_order_by",
]
