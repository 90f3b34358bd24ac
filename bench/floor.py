"""The floor server: a bare grpc.aio server (uvloop) whose handlers run exactly one raw
asyncpg statement per call on Tether's own tables, and an empty handler.

`python -m bench.floor DSN NAMESPACE POOL_SIZE` binds 127.0.0.1 on a free port, prints
`PORT <n>` on stdout and serves until SIGTERM. A tiny generic service with bytes in and
out (`bench.Floor/<Method>`), so no proto is needed: the request is a session id.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import uvloop

SERVICE = "bench.Floor"
METHODS = ("Empty", "Select", "Update", "Insert")

SELECT = "SELECT * FROM sessions WHERE namespace = $1 AND session = $2"
UPDATE = (
    "UPDATE sessions SET last_activity_time = greatest(last_activity_time, now()),"
    " update_time = now(), version = version + 1"
    " WHERE namespace = $1 AND session = $2 RETURNING *"
)
INSERT = (
    'INSERT INTO sessions (namespace, session, uid, kind, agent, "user", channel, labels,'
    " create_time, update_time, last_activity_time)"
    " VALUES ($1, $2, gen_random_uuid()::text, 1, 'agent-0', 'user-0', 'web', '{}'::jsonb,"
    " now(), now(), now()) RETURNING *"
)

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def handlers(pool: Any, namespace: str) -> dict[str, Handler]:
    async def empty(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b""

    def one_statement(sql: str) -> Handler:
        async def handler(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            row = await pool.fetchrow(sql, namespace, request.decode())
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such session")
            return str(row["uid"]).encode()

        return handler

    return {
        "Empty": empty,
        "Select": one_statement(SELECT),
        "Update": one_statement(UPDATE),
        "Insert": one_statement(INSERT),
    }


async def _no_reset(connection: asyncpg.Connection[Any]) -> None:
    """Nothing to reset: the handlers hold no session state. asyncpg's default runs
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release, a second round trip per call that would make the floor no floor."""


async def serve(dsn: str, namespace: str, pool_size: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size, reset=_no_reset)
    server = grpc.aio.server()
    methods: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(handler)
        for name, handler in handlers(pool, namespace).items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
    await pool.close()


def main() -> None:
    dsn, namespace, pool_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvloop.run(serve(dsn, namespace, pool_size))


if __name__ == "__main__":
    main()
