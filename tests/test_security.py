"""Authentication, namespace isolation, roles and audit, against a server with an auth file.

The access matrix: every role (reader, writer, system, admin) x every RPC family (read,
write, admin) x the principal's own namespace or another tenant's. Each cell runs every
probe of its family (the event RPCs too: readers read events, writers append and delete
them, admins purge them) and expects exactly one of:

- the probe's normal answer (the role suffices and the namespace is visible);
- PERMISSION_DENIED / PERMISSION_DENIED (visible namespace, role too low);
- for another tenant's namespace, exactly what an admin gets for the same request in a
  namespace that does not exist (code, reason and resource name): no existence oracle.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.databases import DatabaseBackend
from tests.support.errors import expect_error
from tests.support.security import ROLES, Credential, write_auth_file
from tests.support.server import ServerFactory, ServerProcess
from tests.support.tools import describe, run_tool
from tether.client import (
    AuthorKey,
    Event,
    ExternalConversation,
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
    TetherError,
)
from tether.v1 import session_service_pb2

OWN = "acme"
OTHER = "globex"
RANK = {role: rank for rank, role in enumerate(ROLES)}
FAMILY_ROLE = {"read": "reader", "write": "writer", "admin": "admin"}
SERVICE = "tether.v1.SessionService"
GRPCURL_UNAUTHENTICATED = 64 + 16


# --- the shared secured server ----------------------------------------------------------------


@dataclass
class Secured:
    """A server with an auth file: one principal per role, all but admin limited to OWN."""

    server: ServerProcess
    credentials: dict[str, Credential]
    clients: dict[str, SessionsClient]

    def client(self, role: str) -> SessionsClient:
        return self.clients[role]


@pytest.fixture(scope="module")
def secured(database_backend: DatabaseBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    credentials = {
        role: Credential.new(f"{role}-{OWN}", role, ["*"] if role == "admin" else [OWN]) for role in ROLES
    }
    auth_file = write_auth_file(tmp_path_factory.mktemp("auth") / "auth.toml", credentials.values())
    factory = ServerFactory(database_backend, tmp_path_factory)
    clients: dict[str, SessionsClient] = {}
    try:
        server = factory(env={"TETHER_AUTH_FILE": str(auth_file)})
        clients = {role: SessionsClient(server.target, token=c.token) for role, c in credentials.items()}
        for namespace in (OWN, OTHER):
            clients["admin"].create_namespace(namespace_id=namespace)
        yield Secured(server, credentials, clients)
    finally:
        for client in clients.values():
            client.close()
        factory.close()


# --- a namespace full of resources, and the probes ----------------------------------------------


@dataclass(frozen=True)
class World:
    """Resources in one namespace that the probes act on (each probe has its own where it changes it)."""

    parent: str
    agent: str
    user: str
    spare: str  # a participant no session names: DeleteParticipant
    joiner: str  # not yet a member: AddMember
    deleted_participant: str
    session: str
    doomed_session: str
    deleted_session: str
    member: str  # a removable member: UpdateMember
    leaver: str  # another removable member: RemoveMember
    event: str  # an event of `session`: GetEvent
    doomed_event: str  # another event of `session`: DeleteEvent

    def moved(self, namespace: str) -> World:
        """The same names in another namespace (where nothing was created)."""
        old = self.parent
        return World(
            **{
                field.name: f"namespaces/{namespace}" + getattr(self, field.name).removeprefix(old)
                for field in dataclasses.fields(self)
            }
        )


def build_world(admin: SessionsClient, namespace: str) -> World:
    parent = f"namespaces/{namespace}"

    def participant(kind: Participant.Kind.ValueType) -> str:
        return admin.create_participant(parent=parent, participant=Participant(kind=kind)).name

    agent = participant(Participant.KIND_AGENT)
    user, spare, joiner, member, leaver, gone = (participant(Participant.KIND_USER) for _ in range(6))
    admin.delete_participant(name=gone)

    def session(**fields: object) -> str:
        return admin.create_session(parent=parent, session=Session(agent=agent, **fields)).name  # type: ignore[arg-type]

    main = session(kind=Session.KIND_DIRECT, user=user)
    doomed, deleted = session(kind=Session.KIND_TRIGGER), session(kind=Session.KIND_TRIGGER)
    admin.delete_session(name=deleted)
    members = [admin.add_member(parent=main, member=Member(participant=p)).name for p in (member, leaver)]
    events = [admin.append_event(parent=main, event=Event(author=user)).event.name for _ in range(2)]
    return World(parent, agent, user, spare, joiner, gone, main, doomed, deleted, *members, *events)


Call = Callable[[SessionsClient, World], object]


@dataclass(frozen=True)
class Probe:
    method: str
    call: Call
    allowed: tuple[str, str, str] = ("OK", "", "")  # the outcome when the call is permitted
    namespaced: bool = True


def _member_name(world: World, participant: str) -> str:
    return f"{world.session}/members/{participant.rpartition('/')[2]}"


PROBES: dict[str, list[Probe]] = {
    "read": [
        Probe("GetParticipant", lambda c, w: c.get_participant(name=w.agent)),
        Probe("ListParticipants", lambda c, w: list(c.list_participants(parent=w.parent))),
        Probe("GetSession", lambda c, w: c.get_session(name=w.session)),
        Probe("BatchGetSessions", lambda c, w: c.batch_get_sessions(parent=w.parent, names=[w.session])),
        Probe("ListSessions", lambda c, w: list(c.list_sessions(parent=w.parent))),
        Probe("ListMembers", lambda c, w: list(c.list_members(parent=w.session))),
        Probe("GetEvent", lambda c, w: c.get_event(name=w.event)),
        Probe("ListEvents", lambda c, w: list(c.list_events(parent=w.session, newest_first=True))),
    ],
    "write": [
        Probe(
            "CreateParticipant",
            lambda c, w: c.create_participant(
                parent=w.parent, participant=Participant(kind=Participant.KIND_USER)
            ),
        ),
        Probe(
            "UpdateParticipant",
            lambda c, w: c.update_participant(
                participant=Participant(name=w.user, display_name="Renamed"), update_mask=["display_name"]
            ),
        ),
        Probe("DeleteParticipant", lambda c, w: c.delete_participant(name=w.spare)),
        Probe("UndeleteParticipant", lambda c, w: c.undelete_participant(name=w.deleted_participant)),
        Probe(
            "FindOrCreateParticipant",
            lambda c, w: c.find_or_create_participant(
                parent=w.parent, kind=Participant.KIND_USER, external_id=uuid.uuid4().hex
            ),
        ),
        Probe(
            "CreateSession",
            lambda c, w: c.create_session(
                parent=w.parent, session=Session(kind=Session.KIND_TRIGGER, agent=w.agent)
            ),
        ),
        Probe(
            "UpdateSession",
            lambda c, w: c.update_session(
                session=Session(name=w.session, display_name="Renamed"), update_mask=["display_name"]
            ),
        ),
        Probe("DeleteSession", lambda c, w: c.delete_session(name=w.doomed_session)),
        Probe("UndeleteSession", lambda c, w: c.undelete_session(name=w.deleted_session)),
        Probe(
            "FindOrCreateSession",
            lambda c, w: c.find_or_create_session(
                parent=w.parent,
                external_conversation=ExternalConversation(
                    agent=w.agent, channel="slack", conversation_id=uuid.uuid4().hex
                ),
            ),
        ),
        Probe("RecordActivity", lambda c, w: c.record_activity(name=w.session)),
        Probe("AddMember", lambda c, w: c.add_member(parent=w.session, member=Member(participant=w.joiner))),
        Probe(
            "UpdateMember",
            lambda c, w: c.update_member(member=Member(name=w.member, role=Member.ROLE_OBSERVER)),
        ),
        Probe("RemoveMember", lambda c, w: c.remove_member(name=w.leaver)),
        Probe(
            "AppendEvent",
            lambda c, w: c.append_event(
                parent=w.session, event=Event(author=w.user), expected_last_sequence=2
            ),
        ),
        # By key: `parent` is the namespace, the session and the author are found or created.
        Probe(
            "AppendEvent",
            lambda c, w: c.append_event(
                parent=w.parent,
                external_conversation=ExternalConversation(
                    agent=w.agent, channel="slack", conversation_id=uuid.uuid4().hex
                ),
                author_key=AuthorKey(kind=Participant.KIND_USER, external_id=uuid.uuid4().hex),
                event=Event(),
            ),
        ),
        Probe("DeleteEvent", lambda c, w: c.delete_event(name=w.doomed_event)),
    ],
    "admin": [
        Probe("GetNamespace", lambda c, w: c.get_namespace(name=w.parent)),
        Probe("ListNamespaces", lambda c, w: list(c.list_namespaces()), namespaced=False),
        Probe("PurgeSessions", lambda c, w: c.purge_sessions(parent=w.parent, filter="*", force=False)),
        Probe("PurgeEvents", lambda c, w: c.purge_events(parent=w.session, filter="*", force=False)),
        Probe(
            "PurgeEvents", lambda c, w: c.purge_events(parent=w.session, filter="sequence > 1", force=True)
        ),
        Probe(
            "DeleteNamespace",
            lambda c, w: c.delete_namespace(name=w.parent),
            allowed=("FAILED_PRECONDITION", "NAMESPACE_NOT_EMPTY", "namespaces/{ns}"),  # it holds the world
        ),
        Probe(
            "CreateNamespace",
            lambda c, w: c.create_namespace(namespace_id=f"n-{uuid.uuid4().hex[:8]}"),
            namespaced=False,
        ),
    ],
}
Outcome = tuple[str, str, str]  # code, reason, resource name (its namespace written {ns})


def attempt(probe: Probe, client: SessionsClient, world: World) -> Outcome:
    namespace = world.parent.removeprefix("namespaces/")
    try:
        probe.call(client, world)
    except TetherError as error:
        resource = error.metadata.get("resource_name", "").replace(
            f"namespaces/{namespace}", "namespaces/{ns}"
        )
        return error.code.name, error.reason, resource
    return "OK", "", ""


def expected(secured: Secured, probe: Probe, role: str, family: str, world: World) -> Outcome:
    visible = world.parent == f"namespaces/{OWN}" or role == "admin" or not probe.namespaced
    if not visible:
        # What a namespace that does not exist looks like, to a principal who may see everything.
        phantom = world.moved(f"missing-{uuid.uuid4().hex[:8]}")
        return attempt(probe, secured.client("admin"), phantom)
    if RANK[role] < RANK[FAMILY_ROLE[family]]:
        return "PERMISSION_DENIED", "PERMISSION_DENIED", ""
    return probe.allowed


def test_the_matrix_probes_every_rpc() -> None:
    """Every unary RPC of the service has a probe (a new RPC must get one); WatchSessions, a stream,
    is not in the matrix."""
    rpcs = {m.name for m in session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].methods}
    probed = {probe.method for probes in PROBES.values() for probe in probes}
    assert probed == rpcs - {"WatchSessions"}


@pytest.mark.parametrize("scope", ["own", "other"])
@pytest.mark.parametrize("family", list(PROBES))
@pytest.mark.parametrize("role", ROLES)
def test_access_matrix(secured: Secured, role: str, family: str, scope: str) -> None:
    world = build_world(secured.client("admin"), OWN if scope == "own" else OTHER)
    mismatches = []
    for probe in PROBES[family]:
        want = expected(secured, probe, role, family, world)
        got = attempt(probe, secured.client(role), world)
        if scope == "other" and role != "admin" and probe.namespaced:
            assert want[0] == "NOT_FOUND", f"{probe.method}: a missing namespace answers {want}"
        if got != want:
            mismatches.append(f"{probe.method}: expected {want}, got {got}")
    assert mismatches == [], f"{role} / {family} / {scope}:\n" + "\n".join(mismatches)


# --- events across tenants: no existence oracle ---------------------------------------------------


Refusal = tuple[str, str, str, tuple[tuple[str, str], ...]]  # code, reason, resource name, violations


def refusal(call: Callable[..., object], **request: object) -> Refusal:
    """What a call that must fail answers: code, reason, the resource name it reports, and its
    field violations."""
    try:
        call(**request)
    except TetherError as error:
        violations = tuple((v.field, v.description) for v in error.violations)
        return error.code.name, error.reason, error.metadata.get("resource_name", ""), violations
    raise AssertionError(f"{call.__name__}({request}) succeeded")


@pytest.mark.parametrize("role", ["reader", "writer", "system"])
def test_another_tenants_events_look_like_missing_ones(secured: Secured, role: str) -> None:
    """Another tenant's real session and event get exactly what made-up names in that namespace
    get: NOT_FOUND naming what was asked for, whatever exists there (and nothing changes)."""
    admin, caller = secured.client("admin"), secured.client(role)
    world = build_world(admin, OTHER)
    missing_session = f"{world.parent}/sessions/missing-{uuid.uuid4().hex[:8]}"
    targets = {
        "real": (world.session, world.event),
        "missing event": (world.session, f"{world.session}/events/missing"),
        "missing session": (missing_session, f"{missing_session}/events/missing"),
    }
    for what, (session, event) in targets.items():
        by_event: dict[str, dict[str, object]] = {
            "get_event": {"name": event},
            "delete_event": {"name": event},
        }
        by_session: dict[str, dict[str, object]] = {
            "list_events_page": {"parent": session, "order_by": "sequence desc"},
            "append_event": {"parent": session, "event": Event(), "expected_last_sequence": 2},
            "purge_events": {"parent": session, "filter": "*", "force": True},
        }
        for method, request in by_event.items():
            got = refusal(getattr(caller, method), **request)
            assert got == ("NOT_FOUND", "EVENT_NOT_FOUND", event, ()), f"{method}, {what}: {got}"
        for method, request in by_session.items():
            got = refusal(getattr(caller, method), **request)
            assert got == ("NOT_FOUND", "SESSION_NOT_FOUND", session, ()), f"{method}, {what}: {got}"
    # By key, into that tenant's namespace: with its real agent or a made-up one.
    for agent in (world.agent, f"{world.parent}/participants/missing"):
        got = refusal(
            caller.append_event,
            parent=world.parent,
            external_conversation=ExternalConversation(agent=agent, conversation_id="c-1"),
            author_key=AuthorKey(kind=Participant.KIND_USER, external_id="u-1"),
            event=Event(),
        )
        assert got == ("NOT_FOUND", "NAMESPACE_NOT_FOUND", world.parent, ()), f"by key, {agent}: {got}"
    assert [e.name for e in admin.list_events(parent=world.session)] == [world.event, world.doomed_event]
    assert admin.get_session(name=world.session).event_count == 2


def test_event_references_to_another_tenant_are_refused_alike(secured: Secured) -> None:
    """In its own namespace a writer cannot point an event into another tenant, and the refusal is
    the same whether the other tenant's participant exists or not; a filter naming one matches
    nothing."""
    admin, writer = secured.client("admin"), secured.client("writer")
    own, other = build_world(admin, OWN), build_world(admin, OTHER)
    real, made_up = other.user, f"{other.parent}/participants/missing"

    def as_author(participant: str) -> Refusal:
        return refusal(writer.append_event, parent=own.session, event=Event(author=participant))

    def as_key_agent(participant: str) -> Refusal:
        key = ExternalConversation(agent=participant, conversation_id=f"c-{uuid.uuid4().hex[:8]}")
        return refusal(writer.append_event, parent=own.parent, external_conversation=key, event=Event())

    for name, attempt_with in (("event.author", as_author), ("by key", as_key_agent)):
        answers = attempt_with(real), attempt_with(made_up)
        assert answers[0] == answers[1], (
            f"{name}: a real participant {answers[0]}, a missing one {answers[1]}"
        )
        assert answers[0][:2] == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), f"{name}: {answers[0]}"
        assert len(answers[0][3]) == 1, f"{name}: {answers[0]}"
    assert [field for field, _ in as_author(real)[3]] == ["event.author"]
    for participant in (real, made_up):
        page = writer.list_events_page(parent=own.session, filter=f'author = "{participant}"')
        assert list(page.events) == []
    assert admin.get_session(name=own.session).event_count == 2


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("authorization", "Bearer not-a-configured-token")],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer two tokens")],
    ],
    ids=["missing", "unknown", "basic", "empty", "two-words"],
)
def test_calls_without_a_valid_token_are_unauthenticated(
    secured: Secured, metadata: list[tuple[str, str]]
) -> None:
    with (
        SessionsClient(secured.server.target) as anonymous,
        expect_error(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED) as info,
    ):
        anonymous.list_sessions_page(parent=f"namespaces/{OWN}", metadata=metadata)
    for _, value in metadata:
        assert value.partition(" ")[2] not in info.value.message or not value.partition(" ")[2]


def test_a_second_authorization_entry_is_refused(secured: Secured) -> None:
    extra = [("authorization", f"Bearer {secured.credentials['admin'].token}")]
    with expect_error(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED):
        secured.client("reader").list_sessions_page(parent=f"namespaces/{OWN}", metadata=extra)


def test_health_and_reflection_need_no_token(secured: Secured) -> None:
    listed = run_tool("grpcurl", ["-plaintext", secured.server.target, "list"])
    assert listed.returncode == 0, describe(listed)
    assert SERVICE in listed.stdout.split()
    with grpc.insecure_channel(secured.server.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_with_a_bearer_token(secured: Secured) -> None:
    body = ["-d", f'{{"parent": "namespaces/{OWN}"}}', secured.server.target, f"{SERVICE}/ListSessions"]
    without = run_tool("grpcurl", ["-plaintext", *body])
    assert without.returncode == GRPCURL_UNAUTHENTICATED, describe(without)
    header = f"authorization: Bearer {secured.credentials['reader'].token}"
    with_token = run_tool("grpcurl", ["-plaintext", "-H", header, *body])
    assert with_token.returncode == 0, describe(with_token)
    assert with_token.stdout.strip().startswith("{")


# --- what principals see and what is recorded ---------------------------------------------------


@pytest.mark.parametrize("page_size", [0, 1])
def test_namespaces_are_for_admins(secured: Secured, page_size: int) -> None:
    everything = {n.name for n in secured.client("admin").list_namespaces(page_size=page_size)}
    assert {f"namespaces/{OWN}", f"namespaces/{OTHER}", "namespaces/default"} <= everything
    for role in ("reader", "writer", "system"):
        with expect_error(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED):
            list(secured.client(role).list_namespaces(page_size=page_size))


def test_mutating_calls_are_audited(secured: Secured) -> None:
    server = secured.server
    writer, reader = secured.client("writer"), secured.client("reader")
    parent = f"namespaces/{OWN}"
    name = writer.create_participant(
        parent=parent,
        participant_id=f"audited-{uuid.uuid4().hex[:8]}",
        participant=Participant(kind=Participant.KIND_USER),
    ).name
    created = server.wait_for_event("audit", 30, resource=name, code="OK")
    assert created is not None, server.log_tail()
    assert created["principal"] == f"writer-{OWN}"
    assert created["method"] == f"/{SERVICE}/CreateParticipant"
    reader.get_participant(name=name)  # reads are not audited
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED):
        reader.delete_participant(name=name)
    denied = server.wait_for_event("audit", 30, resource=name, code="PERMISSION_DENIED")
    assert denied is not None, server.log_tail()
    assert denied["principal"] == f"reader-{OWN}"
    with (
        SessionsClient(server.target) as anonymous,
        expect_error(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED),
    ):
        anonymous.delete_participant(name=name)
    anonymous_line = server.wait_for_event("audit", 30, resource=name, code="UNAUTHENTICATED")
    assert anonymous_line is not None, server.log_tail()
    assert anonymous_line["principal"] is None
    methods = {e.get("method") for e in server.events() if e.get("event") == "audit"}
    assert f"/{SERVICE}/GetParticipant" not in methods
    reads = [
        e
        for e in server.events()
        if e.get("event") == "rpc" and e.get("method", "").endswith("/GetParticipant")
    ]
    assert f"reader-{OWN}" in {e.get("principal") for e in reads}


def test_event_writes_are_audited_and_reads_are_not(secured: Secured) -> None:
    server = secured.server
    writer, reader, admin = secured.client("writer"), secured.client("reader"), secured.client("admin")
    world = build_world(admin, OWN)
    appended = writer.append_event(parent=world.session, event=Event(author=world.user)).event
    reader.get_event(name=appended.name)
    reader.list_events_page(parent=world.session)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED):
        reader.delete_event(name=appended.name)
    writer.delete_event(name=appended.name)
    with expect_error(grpc.StatusCode.PERMISSION_DENIED, Reason.PERMISSION_DENIED):
        writer.purge_events(parent=world.session, filter="*", force=True)
    admin.purge_events(parent=world.session, filter="*", force=True)
    # Lines are in the log once the answer is back; this call's audit line proves all before it are.
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    admin.create_namespace(namespace_id=marker)
    assert server.wait_for_event("audit", 30, resource=f"namespaces/{marker}") is not None
    audited = [
        (str(e.get("method")).rpartition("/")[2], e.get("principal"), e.get("code"))
        for e in server.events()
        if e.get("event") == "audit" and str(e.get("resource", "")).startswith(world.session)
    ]
    assert audited[-5:] == [  # after those of building the world
        ("AppendEvent", f"writer-{OWN}", "OK"),
        ("DeleteEvent", f"reader-{OWN}", "PERMISSION_DENIED"),
        ("DeleteEvent", f"writer-{OWN}", "OK"),
        ("PurgeEvents", f"writer-{OWN}", "PERMISSION_DENIED"),
        ("PurgeEvents", f"admin-{OWN}", "OK"),
    ], server.log_tail()
    methods = {e.get("method") for e in server.events() if e.get("event") == "audit"}
    assert not {f"/{SERVICE}/GetEvent", f"/{SERVICE}/ListEvents"} & methods


def test_tokens_never_reach_the_log(secured: Secured) -> None:
    wrong = Credential.new("nobody", "admin", ["*"])
    with (
        SessionsClient(secured.server.target, token=wrong.token) as stranger,
        expect_error(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED),
    ):
        stranger.list_sessions_page(parent=f"namespaces/{OWN}")
    for role in ROLES:
        secured.client(role).list_sessions_page(parent=f"namespaces/{OWN}")
    # A later call's lines are in the log once its answer is back; this one's audit line proves
    # that everything before it is too.
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    secured.client("admin").create_namespace(namespace_id=marker)
    assert secured.server.wait_for_event("audit", 30, resource=f"namespaces/{marker}") is not None
    log = secured.server.log_text()
    leaked = [c.id for c in [*secured.credentials.values(), wrong] if c.token in log]
    assert leaked == [], "tokens found in the server log"


# --- local mode and reloads -------------------------------------------------------------------


def test_without_an_auth_file_loopback_callers_are_the_local_admin(
    server: ServerProcess, client: SessionsClient
) -> None:
    events = server.events()
    assert [e["event"] for e in events].count("auth_disabled_loopback") == 1
    client.get_namespace(name="namespaces/default")
    marker = f"local-{uuid.uuid4().hex[:8]}"
    client.create_namespace(namespace_id=marker)
    line = server.wait_for_event("audit", 30, resource=f"namespaces/{marker}")
    assert line is not None
    assert line["principal"] == "local"


def test_sighup_reloads_the_auth_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    first = Credential.new("first", "writer", ["default"])
    later = [Credential.new(f"later-{i}", "reader", ["default"]) for i in range(3)]
    auth_file = write_auth_file(tmp_path / "auth.toml", [first])
    server = server_factory(env={"TETHER_AUTH_FILE": str(auth_file)})
    with (
        SessionsClient(server.target, token=later[0].token) as newcomer,
        expect_error(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED),
    ):
        newcomer.list_sessions_page(parent="namespaces/default")

    with SessionsClient(server.target, token=first.token) as steady, CallsInFlight(steady) as results:
        for count in (2, 3, 4):  # reload under load: calls in flight must not fail
            write_auth_file(auth_file, [first, *later[: count - 1]])
            os.kill(server.process.pid, signal.SIGHUP)
            assert server.wait_for_event("auth_reloaded", 30, principals=count) is not None, server.log_tail()
    assert results.ok > 0
    assert results.failed == []

    with SessionsClient(server.target, token=later[2].token) as newcomer:
        assert newcomer.list_sessions_page(parent="namespaces/default").sessions is not None

    auth_file.write_text('[[principal]]\nid = "broken"\n')
    os.kill(server.process.pid, signal.SIGHUP)
    failure = server.wait_for_event("auth_reload_failed", 30)
    assert failure is not None, server.log_tail()
    assert "principal[0] (id 'broken'): role: missing" in failure["error"]
    for credential in (first, later[2]):  # the old principals still work
        with SessionsClient(server.target, token=credential.token) as caller:
            caller.list_sessions_page(parent="namespaces/default")
    log = server.log_text()
    assert not [c.id for c in (first, *later) if c.token in log]


@dataclass
class CallResults:
    ok: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)


class CallsInFlight:
    """Calls `client` in a loop on a thread until exit; counts successes, keeps failures."""

    def __init__(self, client: SessionsClient) -> None:
        self._client = client
        self._stop = threading.Event()
        self.results = CallResults()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client.list_sessions_page(parent="namespaces/default")
                self.results.ok += 1
            except TetherError as error:
                self.results.failed.append(str(error))

    def __enter__(self) -> CallResults:
        self._thread.start()
        return self.results

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
