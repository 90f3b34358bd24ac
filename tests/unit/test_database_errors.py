"""Database exceptions map to statuses in one place: unreachable is UNAVAILABLE, a lost
race is ABORTED, anything else is a bug (None: the server answers INTERNAL)."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import exc as sa_exc

from tether.server.errors import from_database_error


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def _dbapi(sqlstate: str, kind: type[sa_exc.DBAPIError] = sa_exc.DBAPIError) -> sa_exc.DBAPIError:
    return kind("SELECT 1", {}, _DriverError(sqlstate))


@pytest.mark.parametrize("sqlstate", ["08006", "53300", "57P01", "57014"])
def test_unreachable_is_unavailable(sqlstate: str) -> None:
    mapped = from_database_error(_dbapi(sqlstate))
    assert mapped is not None
    assert mapped.code == grpc.StatusCode.UNAVAILABLE
    assert mapped.reason == "DATABASE_UNAVAILABLE"


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_lost_race_is_aborted(sqlstate: str) -> None:
    mapped = from_database_error(_dbapi(sqlstate))
    assert mapped is not None
    assert mapped.code == grpc.StatusCode.ABORTED


def test_sqlite_busy_is_unavailable() -> None:
    mapped = from_database_error(sa_exc.OperationalError("BEGIN", {}, Exception("database is locked")))
    assert mapped is not None
    assert mapped.code == grpc.StatusCode.UNAVAILABLE


def test_a_bug_is_not_mapped() -> None:
    assert from_database_error(_dbapi("42601", sa_exc.ProgrammingError)) is None
    assert from_database_error(ValueError("boom")) is None
