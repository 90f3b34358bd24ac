"""gRPC handlers of tether.v1.SessionService (placeholder until the domain lands).

`build_servicer(engine, settings)` is what the server assembly (app.py) calls.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from tether.v1 import session_service_pb2_grpc


class SessionService(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self, engine: AsyncEngine, settings: Any) -> None:
        self._engine = engine
        self._settings = settings


def build_servicer(engine: AsyncEngine, settings: Any) -> SessionService:
    return SessionService(engine, settings)
