"""Operators debug Tether with grpcurl: reflection lists and describes the API (with its comments),
and JSON calls work (tests/test_readme.py runs the README's own examples), with a clean
INVALID_ARGUMENT for bad input."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from tests.support.server import ServerProcess
from tests.support.tools import describe, run_tool
from tether.v1 import session_service_pb2

SERVICE = "tether.v1.SessionService"
GRPCURL_RPC_ERROR = 64  # grpcurl exits with 64 + the gRPC status code when the call fails
INVALID_ARGUMENT = 3


def grpcurl(
    server: ServerProcess, *args: str, data: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    body = ["-d", json.dumps(data)] if data is not None else []
    return run_tool("grpcurl", ["-plaintext", *body, server.target, *args])


def call(server: ServerProcess, method: str, data: dict[str, Any]) -> dict[str, Any]:
    """Call ``tether.v1.SessionService/<method>`` with a JSON body; the JSON answer."""
    result = grpcurl(server, f"{SERVICE}/{method}", data=data)
    assert result.returncode == 0, describe(result)
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_list_shows_the_services(server: ServerProcess) -> None:
    result = grpcurl(server, "list")
    assert result.returncode == 0, describe(result)
    services = set(result.stdout.split())
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services


def test_describe_service_shows_every_rpc(server: ServerProcess) -> None:
    result = grpcurl(server, "describe", SERVICE)
    assert result.returncode == 0, describe(result)
    methods = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].methods
    assert len(methods) >= 20
    missing = [method.name for method in methods if f"rpc {method.name} (" not in result.stdout]
    assert missing == [], describe(result)
    assert "returns ( stream .tether.v1.WatchSessionsResponse )" in result.stdout


def test_describe_message_shows_field_comments(server: ServerProcess) -> None:
    result = grpcurl(server, "describe", "tether.v1.Session")
    assert result.returncode == 0, describe(result)
    assert "string channel = 9" in result.stdout
    # Comments from protos/tether/v1/session.proto come through reflection.
    assert "A conversation between participants on one channel." in result.stdout, describe(result)
    assert "The channel the conversation happens on" in result.stdout, describe(result)


def test_create_participant_with_json(server: ServerProcess) -> None:
    participant_id = unique("bot")
    answer = call(
        server,
        "CreateParticipant",
        {
            "parent": "namespaces/default",
            "participant_id": participant_id,
            "participant": {"kind": "KIND_AGENT", "display_name": "Bot"},
        },
    )
    assert answer["name"] == f"namespaces/default/participants/{participant_id}"
    assert answer["kind"] == "KIND_AGENT"
    assert answer.get("displayName", answer.get("display_name")) == "Bot"


def test_bad_input_is_invalid_argument(server: ServerProcess) -> None:
    result = grpcurl(
        server,
        f"{SERVICE}/CreateParticipant",
        data={"parent": "namespaces/default", "participant_id": "Not A Valid Id", "participant": {}},
    )
    assert result.returncode == GRPCURL_RPC_ERROR + INVALID_ARGUMENT, describe(result)
    assert "Code: InvalidArgument" in result.stderr


def test_create_and_find_or_create_sessions_with_json(server: ServerProcess) -> None:
    """Create a session, then find-or-create one twice, in JSON."""
    agent_id, user_id, session_id, conversation = unique("agent"), unique("user"), unique("s"), unique("oc")
    parent = "namespaces/default"
    agent = call(
        server,
        "CreateParticipant",
        {"parent": parent, "participant_id": agent_id, "participant": {"kind": "KIND_AGENT"}},
    )["name"]
    user = call(
        server,
        "CreateParticipant",
        {"parent": parent, "participant_id": user_id, "participant": {"kind": "KIND_USER"}},
    )["name"]

    session = call(
        server,
        "CreateSession",
        {
            "parent": parent,
            "session_id": session_id,
            "session": {"kind": "KIND_DIRECT", "agent": agent, "user": user, "display_name": "Support chat"},
        },
    )
    assert session["name"] == f"{parent}/sessions/{session_id}"
    assert session["kind"] == "KIND_DIRECT"

    request = {
        "parent": parent,
        "external_conversation": {"agent": agent, "channel": "slack", "conversation_id": conversation},
        "session": {"user": user},
    }
    first = call(server, "FindOrCreateSession", request)
    again = call(server, "FindOrCreateSession", request)
    assert first.get("created") is True
    assert again.get("created", False) is False  # false is the default, which grpcurl leaves out
    assert again["session"]["name"] == first["session"]["name"]
    assert first["session"].get(
        "externalConversationId", first["session"].get("external_conversation_id")
    ) == (conversation)
