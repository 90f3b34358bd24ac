"""WatchSessions: following a namespace's change log (`tether.server.db.changes`).

Each watch reads its own pages from the database, from its own position, so a slow
watcher holds at most one page in the server: while it does not read, gRPC's flow
control holds its writes and nothing more is read for it. An idle watch costs one
waiting coroutine.

Wake-ups come from one `ChangeHub` per process, never from polling per watcher:

- a write in this process (the call guard and the sweeper `poke()` the hub);
- on PostgreSQL, a write in another process: after its writes the hub of that
  process sends `NOTIFY tether_changes` (coalesced, at most one per
  `NOTIFY_INTERVAL`, none while no other process listens), and each hub with
  watchers LISTENs on one connection of its own;
- a bounded poll (`poll_interval`) as the safety net, and sooner while changes wait
  behind an older transaction that is still running (`changes.ready`).

On a wake-up the hub asks the database once which of the namespaces watched here
have new final changes (a primary-key probe each), and wakes only their watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
from google.protobuf import field_mask_pb2
from sqlalchemy import ColumnElement

from tether.server import convert, errors, names
from tether.server.db import changes as changes_db
from tether.server.db.base import Database
from tether.server.db.hot import CONNECT_TIMEOUT, asyncpg_dsn
from tether.server.errors import Reason
from tether.server.log import get_logger
from tether.v1 import event_pb2, session_pb2
from tether.v1 import session_service_pb2 as pb

CHANNEL = "tether_changes"
# Seconds between two NOTIFYs of one process (each is a small transaction that
# PostgreSQL serializes with every other notifying commit).
NOTIFY_INTERVAL = 0.005
# Seconds between a process's looks at whether any other process listens (until one
# does, a NOTIFY would be work for nobody; a new listener's poll covers the gap).
LISTENERS_CHECK_INTERVAL = 1.0
LISTENER_NAME = "tether-watch:"
# Seconds between the hub's looks at the log while changes wait for an older
# transaction: the first, and the most it backs off to (below the poll interval).
WAITING_RETRY = 0.005
WAITING_RETRY_MAX = 0.05
# Seconds between two of the hub's looks at the log at least: under a stream of writes
# each look (and each watcher's page) covers the writes of this long, so the cost per
# change falls as the rate rises, for at most this much more delivery latency.
SCAN_INTERVAL = 0.02
# The initial metadata key that tells a watcher the revision its stream starts after.
REVISION_METADATA = "tether-revision"
_ALL_SESSION_FIELDS = frozenset(field.name for field in session_pb2.Session.DESCRIPTOR.fields)


class ChangeHub:
    """One per process: wakes the watchers of a namespace when it has new changes."""

    def __init__(self, db: Database, database_url: str, poll_interval: float) -> None:
        self._db = db
        self._url = database_url
        self._poll_interval = poll_interval
        self._log = get_logger()
        self._signals: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._poked = asyncio.Event()
        self._closed = asyncio.Event()
        self._me = uuid.uuid4().hex  # this process's NOTIFY payload: its own are ignored
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection[Any] | None = None

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._follow(), name="tether-watch-hub"))
        if self._db.is_postgresql:
            self._tasks.append(asyncio.create_task(self._notify(), name="tether-watch-notify"))

    async def close(self) -> None:
        """End every watch (SERVER_SHUTTING_DOWN) and stop."""
        self._closed.set()
        for signal in self._signals.values():
            signal.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    def poke(self) -> None:
        """Something in this process wrote (its transaction committed or failed)."""
        self._poked.set()
        if self._watchers:
            self._wake.set()

    # --- the watchers' side ---------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, namespace: str) -> Iterator[None]:
        self._watchers[namespace] = self._watchers.get(namespace, 0) + 1
        self._wake.set()  # the hub may have been idle: let it open its LISTEN connection
        try:
            yield
        finally:
            self._watchers[namespace] -= 1
            if not self._watchers[namespace]:
                del self._watchers[namespace]
                self._signals.pop(namespace, None)

    def signal(self, namespace: str) -> asyncio.Event:
        """Set when `namespace` has changes newer than when this was taken (take it
        before reading, wait on it after: nothing in between is missed)."""
        signal = self._signals.get(namespace)
        if signal is None or signal.is_set():
            signal = self._signals[namespace] = asyncio.Event()
            if self._closed.is_set():
                signal.set()
        return signal

    async def wait(self, signal: asyncio.Event) -> None:
        """Until `signal` is set (the hub sets every signal after it could not reach the
        database, so nothing waits for good); SERVER_SHUTTING_DOWN once closed."""
        await signal.wait()
        if self._closed.is_set():
            raise errors.ApiError(
                Reason.SERVER_SHUTTING_DOWN, "the server is shutting down; resume the watch"
            )

    def _wake_namespaces(self, namespaces: Any) -> None:
        for namespace in namespaces:
            signal = self._signals.get(namespace)
            if signal is not None:
                signal.set()

    # --- the hub's own tasks ----------------------------------------------------------------

    async def _follow(self) -> None:
        position: int | None = None
        retry: float | None = None  # set while changes wait behind an older transaction
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), retry or self._poll_interval)
            self._wake.clear()
            if not self._watchers:
                position, retry = None, None  # nobody to wake: start afresh when someone comes
                continue
            if self._db.is_postgresql and self._listener is None:
                await self._listen()
            try:
                first = position is None
                position, news, waiting = await changes_db.ready(self._db, list(self._watchers), position)
            except Exception as exc:  # the database may be down: the next look starts afresh
                self._log.warning("watch_hub_failed", error=f"{type(exc).__name__}: {exc}")
                position, retry = None, None
                self._wake_namespaces(list(self._signals))  # their reads fail (UNAVAILABLE) or catch up
                continue
            self._wake_namespaces(list(self._signals) if first else news)
            retry = (min(retry * 2, WAITING_RETRY_MAX) if retry else WAITING_RETRY) if waiting else None
            await asyncio.sleep(SCAN_INTERVAL)

    async def _listen(self) -> None:
        try:
            connection = await asyncpg.connect(
                asyncpg_dsn(self._url),
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": LISTENER_NAME + self._me},
            )
            await connection.add_listener(CHANNEL, self._notified)
            connection.add_termination_listener(self._listener_lost)
        except Exception as exc:  # down for now: the poll covers, the next wake-up tries again
            self._log.warning("watch_listen_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._listener = connection

    def _listener_lost(self, connection: Any) -> None:
        self._listener = None

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self._me:
            self._wake.set()

    async def _notify(self) -> None:
        """Tell the other processes after this one wrote: one NOTIFY for however many writes,
        none while no other process listens."""
        assert self._db.hot is not None
        others, checked = False, float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            await self._poked.wait()
            self._poked.clear()
            try:
                if loop.time() - checked >= LISTENERS_CHECK_INTERVAL:
                    checked, others = loop.time(), await self._others_listen()
                if others:
                    await self._db.hot.fetchrow("SELECT pg_notify($1, $2)", CHANNEL, self._me)
            except Exception as exc:  # their poll covers
                self._log.warning("watch_notify_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(NOTIFY_INTERVAL)

    async def _others_listen(self) -> bool:
        assert self._db.hot is not None
        row = await self._db.hot.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name LIKE $1 "
            "AND application_name <> $2) AS others",
            LISTENER_NAME + "%",
            LISTENER_NAME + self._me,
        )
        return bool(row and row["others"])


# --- one watch ---------------------------------------------------------------------------


class Mask:
    """The read mask of a watch: which Session fields each change carries."""

    def __init__(self, read_mask: field_mask_pb2.FieldMask | None) -> None:
        paths = list(read_mask.paths) if read_mask is not None else []
        self.everything = paths == ["*"]
        self.fields = frozenset(paths) if paths and not self.everything else None
        self.with_state = self.everything or (self.fields is not None and "session_state" in self.fields)

    @staticmethod
    def violations(read_mask: field_mask_pb2.FieldMask) -> list[str]:
        if list(read_mask.paths) == ["*"]:
            return []
        return [path for path in read_mask.paths if path not in _ALL_SESSION_FIELDS]

    def apply(self, session: session_pb2.Session) -> session_pb2.Session:
        if self.fields is None:
            return session
        kept = session_pb2.Session()
        field_mask_pb2.FieldMask(paths=sorted(self.fields)).MergeMessage(session, kept)
        return kept


def to_response(namespace: str, change: changes_db.Change, mask: Mask) -> pb.WatchSessionsResponse:
    response = pb.WatchSessionsResponse(
        revision=change.revision,
        type=pb.WatchSessionsResponse.ChangeType.ValueType(change.type),
        change_time=convert.timestamp(change.change_time),
    )
    if change.type == changes_db.PURGED:
        response.session.name = names.session_name(namespace, change.session["session"])
    else:
        response.session.CopyFrom(mask.apply(convert.session_to_proto(change.session)))
    if change.member is not None:
        response.member.CopyFrom(convert.member_to_proto(change.member))
    if change.event is not None:
        event = change.event
        if "uid" in event:
            response.event.CopyFrom(convert.event_to_proto(event))
        else:
            response.event.CopyFrom(
                event_pb2.Event(
                    name=names.event_name(namespace, event["session"], event["event"]),
                    sequence=event["sequence"],
                )
            )
    return response


async def follow(
    db: Database,
    hub: ChangeHub,
    namespace: str,
    start_revision: int,
    where: ColumnElement[bool] | None,
    mask: Mask,
    context: Any,
) -> AsyncIterator[pb.WatchSessionsResponse]:
    """The changes of `namespace` after `start_revision` (0: from now) matching `where`,
    in revision order, for as long as the caller reads."""
    with hub.watching(namespace):
        head = await changes_db.head(db, namespace)
        if start_revision > head:
            raise errors.ApiError(
                Reason.REVISION_AHEAD,
                f"start_revision {start_revision} is beyond the newest revision ({head})",
                metadata={"head_revision": str(head)},
            )
        position = start_revision or head
        await context.send_initial_metadata(((REVISION_METADATA, str(position)),))
        reader = changes_db.Reader(db, namespace, where, with_state=mask.with_state)
        while True:
            signal = hub.signal(namespace)
            try:
                page = await reader.read(position)
            except changes_db.OutOfRangeError as exc:
                raise _compacted(exc) from None
            for change in page.changes:
                yield to_response(namespace, change, mask)
            position = page.position
            if not page.more:
                await hub.wait(signal)


def _compacted(exc: changes_db.OutOfRangeError) -> errors.ApiError:
    return errors.ApiError(
        Reason.REVISION_COMPACTED,
        f"the changes after revision {exc.after} were compacted away up to {exc.compacted}; "
        f"resume from {exc.compacted} or later",
        metadata={"oldest_revision": str(exc.oldest), "resume_revision": str(exc.compacted)},
    )
