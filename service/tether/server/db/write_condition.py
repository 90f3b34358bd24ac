"""What a write to an existing resource must find, checked in the statement itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table

from tether.server import errors, etags
from tether.server.errors import Reason
from tether.server.etags import Etag


def managed_refused(resource_name: str) -> errors.ApiError:
    return errors.permission_denied(
        f"{resource_name!r} is managed: only system and admin principals may change it",
        reason=Reason.MANAGED_RESOURCE,
        resource_name=resource_name,
    )


@dataclass(frozen=True)
class WriteCondition:
    """The caller's etag, if it sent one (AIP-154), and whether it may change
    managed resources (system and admin principals may). Every write to an
    existing resource takes one: there is no default, so no write forgets the
    managed check."""

    expected: Etag | None
    may_manage: bool

    def clauses(self, table: Table) -> list[ColumnElement[bool]]:
        """SQL conditions for an UPDATE/DELETE of a row of `table`."""
        found: list[ColumnElement[bool]] = []
        etag_condition = etags.condition(table.c.uid, table.c.version, self.expected)
        if etag_condition is not None:
            found.append(etag_condition)
        if not self.may_manage:
            found.append(table.c.managed.is_(False))
        return found

    def check(self, resource_name: str, row: Any) -> None:
        """After a conditional write matched no row: raise why, if it was this condition."""
        if not self.may_manage and row["managed"]:
            raise managed_refused(resource_name)
        etags.check(resource_name, row, self.expected)
