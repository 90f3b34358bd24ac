"""SQLite (a file): the hot calls as plain functions of a synchronous SQLAlchemy
`Connection`, run in threads of their own.

Through aiosqlite every statement is a round trip to the connection's thread, and
a write transaction of a CreateSession is about seven of them (BEGIN, reads,
inserts, COMMIT, the pool's reset); while one writer holds SQLite's lock every other
writer waits, so the round trips, not SQLite, set the write rate. Here:

- **Writes** go to one writer thread with one connection. Calls that arrive while a
  batch runs queue up (first come, first served) and the next batch commits them
  together: BEGIN IMMEDIATE, each call in a SAVEPOINT of its own (a call that fails
  rolls back alone), one COMMIT. A caller hears back after its batch committed.
  Batches take the database's in-process write turn (`Database._writer`), so they
  and the async write paths never wait on each other through SQLite's busy handler.
- **Reads** run on a few reader threads, each with its own connection (WAL lets them
  read beside the writer).

Another process on the same file still meets this one on SQLite's lock, through
`busy_timeout` (README, "SQLite").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tether.server.db.engine import READ_ONLY, sqlite_on_begin, sqlite_on_connect

T = TypeVar("T")
Work = Callable[[Connection], T]
# Calls per write batch: bounds how long a batch holds SQLite's lock (and its latency).
MAX_BATCH = 64
READER_THREADS = 2


@dataclass
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any] = field(repr=False)
    result: Any = None
    error: BaseException | None = None


class SqliteRunner:
    def __init__(self, url: str, write_turn: asyncio.Lock) -> None:
        sync_url = make_url(url).set(drivername="sqlite")
        self._engine: Engine = create_engine(sync_url, poolclass=NullPool)
        event.listen(self._engine, "connect", sqlite_on_connect)
        event.listen(self._engine, "begin", sqlite_on_begin)
        self._write_turn = write_turn
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tether-sqlite-writer")
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="tether-sqlite-reader")
        self._local = threading.local()
        self._queue: list[_Job] = []
        self._draining: asyncio.Task[None] | None = None
        self._connections: list[Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> Connection:
        """This thread's connection (each thread keeps one: sqlite3 connections stay on their thread)."""
        conn: Connection | None = getattr(self._local, "connection", None)
        if conn is None:
            conn = self._local.connection = self._engine.connect()
            with self._lock:
                self._connections.append(conn)
        return conn

    async def read(self, work: Work[T]) -> T:
        """`work(conn)` in a read-only (deferred) transaction on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read, work)

    def _read(self, work: Work[T]) -> T:
        conn: Connection | None = getattr(self._local, "reader", None)
        if conn is None:
            conn = self._local.reader = self._connection().execution_options(**{READ_ONLY: True})
        with conn.begin():
            return work(conn)

    async def write(self, work: Work[T]) -> T:
        """`work(conn)` committed with the other writes of its batch; its own error rolls back
        only its own changes (a SAVEPOINT)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(work, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain(), name="tether-sqlite-writes")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                async with self._write_turn:
                    await loop.run_in_executor(self._writer, self._commit, batch)
            except BaseException as exc:  # the batch did not commit: every call in it failed with it
                for job in batch:
                    job.error = exc
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                for job in batch:
                    if job.future.done():
                        continue  # the caller went away (deadline): its effect stands or not, as committed
                    if isinstance(job.error, asyncio.CancelledError):
                        job.future.cancel()
                    elif job.error is not None:
                        job.future.set_exception(job.error)
                    else:
                        job.future.set_result(job.result)

    def _commit(self, batch: list[_Job]) -> None:
        """One transaction for the batch; a failed BEGIN or COMMIT raises (nothing is stored)."""
        conn = self._connection()
        with conn.begin():
            for job in batch:
                try:
                    with conn.begin_nested():
                        job.result = job.work(conn)
                except Exception as exc:  # this call's error: rolled back to its savepoint
                    job.error = exc

    def close(self) -> None:
        """Stop the threads and close their connections."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        for conn in self._connections:
            with contextlib.suppress(Exception):  # a connection of a finished thread: nothing to do
                conn.close()
        self._engine.dispose()
