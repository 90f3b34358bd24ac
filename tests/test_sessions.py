"""Sessions through the real server: kinds, members, updates, soft delete,
activity, batch get and listing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration

from tests.support.errors import expect_error
from tether.client import (
    Member,
    Participant,
    Reason,
    Session,
    SessionsClient,
)

DIRECT = Session.KIND_DIRECT
GROUP = Session.KIND_GROUP
A2A = Session.KIND_AGENT_TO_AGENT
TRIGGER = Session.KIND_TRIGGER


@pytest.fixture
def agent(client: SessionsClient, parent: str) -> str:
    return client.create_participant(
        parent=parent, participant_id="agent", participant=Participant(kind=Participant.KIND_AGENT)
    ).name


@pytest.fixture
def peer(client: SessionsClient, parent: str) -> str:
    return client.create_participant(
        parent=parent, participant_id="peer", participant=Participant(kind=Participant.KIND_AGENT)
    ).name


@pytest.fixture
def user(client: SessionsClient, parent: str) -> str:
    return client.create_participant(
        parent=parent, participant_id="user", participant=Participant(kind=Participant.KIND_USER)
    ).name


def test_create_each_kind(client: SessionsClient, parent: str, agent: str, peer: str, user: str) -> None:
    direct = client.create_session(
        parent=parent, session_id="d", session=Session(kind=DIRECT, agent=agent, user=user, display_name="Hi")
    )
    assert direct.name == f"{parent}/sessions/d"
    assert direct.channel == "web"
    assert direct.member_count == 2
    assert direct.auto_created is False
    assert direct.last_activity_time == direct.create_time
    assert direct.enabled is True
    group = client.create_session(parent=parent, session=Session(kind=GROUP, agent=agent, group_name="ops"))
    assert group.user == ""
    assert group.member_count == 1
    assert group.group_name == "ops"
    pair = client.create_session(parent=parent, session=Session(kind=A2A, agent=agent, peer_agent=peer))
    assert pair.peer_agent == peer
    assert pair.member_count == 2
    trigger = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent, channel="api"))
    assert trigger.channel == "api"
    assert client.get_session(name=direct.name) == direct


def test_kind_rules_report_every_field(client: SessionsClient, parent: str, agent: str, user: str) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        fields=["session.user", "session.peer_agent", "session.channel"],
    ):
        client.create_session(
            parent=parent,
            session=Session(kind=GROUP, agent=agent, user=user, peer_agent=agent, channel="Bad!"),
        )
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.user"]):
        client.create_session(parent=parent, session=Session(kind=DIRECT, agent=agent))
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.kind"]):
        client.create_session(parent=parent, session=Session(agent=agent))
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.peer_agent"]
    ):
        client.create_session(parent=parent, session=Session(kind=A2A, agent=agent, peer_agent=agent))
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.group_name"]
    ):
        client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent, group_name="g"))


def test_participant_kinds_and_existence(client: SessionsClient, parent: str, agent: str, user: str) -> None:
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.WRONG_PARTICIPANT_KIND,
        fields=["session.agent", "session.user"],
    ):
        client.create_session(parent=parent, session=Session(kind=DIRECT, agent=user, user=agent))
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.PARTICIPANT_NOT_FOUND):
        client.create_session(
            parent=parent, session=Session(kind=GROUP, agent=f"{parent}/participants/ghost")
        )
    client.delete_participant(name=user)
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.PARTICIPANT_DELETED):
        client.create_session(parent=parent, session=Session(kind=DIRECT, agent=agent, user=user))


def test_cross_namespace_reference_is_invalid(
    client: SessionsClient, parent: str, other_parent: str, agent: str
) -> None:
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.agent"]):
        client.create_session(parent=other_parent, session=Session(kind=GROUP, agent=agent))


def test_duplicate_session_id_and_conversation(client: SessionsClient, parent: str, agent: str) -> None:
    s = Session(kind=GROUP, agent=agent, channel="slack", external_conversation_id="C1")
    client.create_session(parent=parent, session_id="s1", session=s)
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.SESSION_ALREADY_EXISTS):
        client.create_session(parent=parent, session_id="s1", session=Session(kind=GROUP, agent=agent))
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.CONVERSATION_ALREADY_EXISTS):
        client.create_session(parent=parent, session=s)
    # Another channel is another conversation.
    client.create_session(
        parent=parent,
        session=Session(kind=GROUP, agent=agent, channel="feishu", external_conversation_id="C1"),
    )


def test_create_refusals_leave_nothing_behind(
    client: SessionsClient, parent: str, agent: str, peer: str, user: str
) -> None:
    """Each reason a create is refused, and that the refused id is still free."""
    client.update_participant(participant=Participant(name=user, enabled=False), update_mask=["enabled"])
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.PARTICIPANT_DISABLED):
        client.create_session(
            parent=parent, session_id="x", session=Session(kind=DIRECT, agent=agent, user=user)
        )
    client.create_session(parent=parent, session=Session(kind=A2A, agent=agent, peer_agent=peer))
    # The unordered pair is taken.
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.CONVERSATION_ALREADY_EXISTS):
        client.create_session(
            parent=parent, session_id="x", session=Session(kind=A2A, agent=peer, peer_agent=agent)
        )
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
        client.create_session(
            parent="namespaces/no-such-namespace",
            session=Session(kind=GROUP, agent="namespaces/no-such-namespace/participants/a"),
        )
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.get_session(name=f"{parent}/sessions/x")
    state = struct_pb2.Struct()
    state.update({"step": 2, "tags": ["a", "b"], "nested": {"ok": True}})
    created = client.create_session(
        parent=parent,
        session_id="x",
        session=Session(kind=GROUP, agent=agent, labels={"team": "ops"}, session_state=state),
    )
    assert created.member_count == 1
    assert dict(created.labels) == {"team": "ops"}
    assert created.session_state == state
    assert client.get_session(name=created.name) == created
    assert [m.participant for m in client.list_members(parent=created.name)] == [agent]


def test_members(client: SessionsClient, parent: str, agent: str, user: str) -> None:
    session = client.create_session(parent=parent, session=Session(kind=DIRECT, agent=agent, user=user))
    members = list(client.list_members(parent=session.name))
    assert [(m.participant, m.role) for m in members] == [
        (agent, Member.ROLE_OWNER),
        (user, Member.ROLE_MEMBER),
    ]
    assert members[0].participant_kind == Participant.KIND_AGENT
    friend = client.create_participant(
        parent=parent, participant=Participant(kind=Participant.KIND_USER)
    ).name
    added = client.add_member(
        parent=session.name, member=Member(participant=friend, role=Member.ROLE_OBSERVER)
    )
    assert added.name == f"{session.name}/members/{friend.rsplit('/', 1)[1]}"
    assert added.role == Member.ROLE_OBSERVER
    assert client.get_session(name=session.name).member_count == 3
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.MEMBER_ALREADY_EXISTS):
        client.add_member(parent=session.name, member=Member(participant=friend))
    updated = client.update_member(member=Member(name=added.name, role=Member.ROLE_OWNER))
    assert updated.role == Member.ROLE_OWNER
    assert updated.etag != added.etag
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.AUTOMATIC_MEMBER):
        client.remove_member(name=f"{session.name}/members/agent")
    client.remove_member(name=added.name)
    assert client.get_session(name=session.name).member_count == 2
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.MEMBER_NOT_FOUND):
        client.remove_member(name=added.name)
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["member.participant"]
    ):
        client.add_member(parent=session.name, member=Member(participant="namespaces/default/participants/x"))
    pages = list(client.list_members(parent=session.name, page_size=1))
    assert len(pages) == 2


def test_update_session(client: SessionsClient, parent: str, agent: str, user: str) -> None:
    s = client.create_session(
        parent=parent,
        session=Session(kind=DIRECT, agent=agent, user=user, display_name="a", labels={"k": "v"}),
    )
    state = struct_pb2.Struct()
    state.update({"lang": "en", "turns": 3})
    updated = client.update_session(session=Session(name=s.name, display_name="b", session_state=state))
    assert updated.display_name == "b"
    assert dict(updated.labels) == {"k": "v"}
    assert updated.session_state == state
    assert updated.etag != s.etag
    star = client.update_session(session=Session(name=s.name, description="only this"), update_mask=["*"])
    assert star.description == "only this"
    assert star.display_name == ""
    assert dict(star.labels) == {}
    assert star.agent == agent
    assert star.user == user
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.IMMUTABLE_FIELD, fields=["session.agent"]):
        client.update_session(session=Session(name=s.name), update_mask=["agent"])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.IMMUTABLE_FIELD, fields=["session.kind"]):
        client.update_session(session=Session(name=s.name, kind=GROUP))
    with expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["session.group_name"]
    ):
        client.update_session(session=Session(name=s.name, group_name="g"))
    ttl = client.update_session(session=Session(name=s.name, ttl=Duration(seconds=3600)))
    assert ttl.expire_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(minutes=59)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.update_session(session=Session(name=f"{parent}/sessions/nope", display_name="x"))


def test_soft_delete_undelete_and_show_deleted(client: SessionsClient, parent: str, agent: str) -> None:
    s = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    deleted = client.delete_session(name=s.name)
    assert deleted.HasField("delete_time")
    assert deleted.HasField("purge_time")
    assert deleted.purge_time.ToDatetime() - deleted.delete_time.ToDatetime() == timedelta(days=30)
    assert client.get_session(name=s.name).HasField("delete_time")
    assert s.name not in [x.name for x in client.list_sessions(parent=parent)]
    assert s.name in [x.name for x in client.list_sessions(parent=parent, show_deleted=True)]
    calls: list[Callable[[], object]] = [
        lambda: client.record_activity(name=s.name),
        lambda: client.update_session(session=Session(name=s.name, display_name="x")),
        lambda: client.delete_session(name=s.name),
    ]
    for call in calls:
        with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DELETED):
            call()
    restored = client.undelete_session(name=s.name)
    assert not restored.HasField("delete_time")
    assert restored.etag != deleted.etag
    with expect_error(grpc.StatusCode.ALREADY_EXISTS, Reason.SESSION_ALREADY_EXISTS):
        client.undelete_session(name=s.name)


def test_record_activity_only_moves_forward(client: SessionsClient, parent: str, agent: str) -> None:
    s = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    later = datetime.now(UTC) + timedelta(hours=1)
    moved = client.record_activity(name=s.name, activity_time=later)
    assert moved.last_activity_time.ToDatetime(tzinfo=UTC) == later
    assert moved.etag == s.etag  # activity alone never changes the etag (test_etags.py)
    unchanged = client.record_activity(name=s.name, activity_time=later - timedelta(minutes=5))
    assert unchanged.last_activity_time == moved.last_activity_time
    assert unchanged.etag == moved.etag
    now = client.record_activity(name=s.name)
    assert now.last_activity_time == moved.last_activity_time
    client.update_session(session=Session(name=s.name, enabled=False))
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DISABLED):
        client.record_activity(name=s.name)
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.record_activity(name=f"{parent}/sessions/missing")


def test_batch_get(client: SessionsClient, parent: str, agent: str) -> None:
    a = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    b = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    got = client.batch_get_sessions(parent=parent, names=[b.name, a.name, b.name])
    assert [s.name for s in got.sessions] == [b.name, a.name, b.name]
    with expect_error(grpc.StatusCode.NOT_FOUND, Reason.SESSION_NOT_FOUND):
        client.batch_get_sessions(parent=parent, names=[a.name, f"{parent}/sessions/missing"])
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, fields=["names[0]"]):
        client.batch_get_sessions(parent=parent, names=["namespaces/default/sessions/x"])


def test_list_filter_order_and_pages(
    client: SessionsClient, parent: str, agent: str, peer: str, user: str
) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(9):
        kind = DIRECT if i % 3 == 0 else GROUP
        s = client.create_session(
            parent=parent,
            session_id=f"s{i}",
            session=Session(
                kind=kind,
                agent=agent,
                user=user if kind == DIRECT else "",
                channel="slack" if i < 4 else "web",
                display_name=f"t{i}",
                labels={"tier": "gold"} if i in (2, 5) else {},
            ),
        )
        client.record_activity(name=s.name, activity_time=base + timedelta(minutes=i % 5))
    minutes = [
        int(s.last_activity_time.ToDatetime().minute)
        for s in client.list_sessions(parent=parent, page_size=2)
    ]
    assert minutes == sorted((i % 5 for i in range(9)), reverse=True)  # default: last_activity_time desc

    def ids(flt: str) -> list[str]:
        return sorted(s.name.rsplit("/", 1)[1] for s in client.list_sessions(parent=parent, filter=flt))

    assert ids("kind = DIRECT") == ["s0", "s3", "s6"]
    assert ids('channel = "slack" AND NOT kind = DIRECT') == ["s1", "s2"]
    assert ids("labels.tier = gold") == ["s2", "s5"]
    assert ids("labels.tier:*") == ["s2", "s5"]
    assert ids(f'member = "{user}"') == ["s0", "s3", "s6"]
    # AIP-160: OR binds tighter than AND.
    assert ids(f'user = "{user}" OR kind = GROUP AND channel = slack') == ["s0", "s1", "s2", "s3"]
    assert ids('last_activity_time >= "2030-01-01T00:03:00Z"') == ["s3", "s4", "s8"]
    names_asc = [
        s.display_name for s in client.list_sessions(parent=parent, order_by="display_name asc", page_size=4)
    ]
    assert names_asc == [f"t{i}" for i in range(9)]


def test_page_token_is_bound_to_its_query(client: SessionsClient, parent: str, agent: str) -> None:
    for _ in range(3):
        client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    first = client.list_sessions_page(parent=parent, page_size=1)
    assert first.next_page_token
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, fields=["page_token"]):
        client.list_sessions_page(
            parent=parent, page_size=1, page_token=first.next_page_token, filter="kind = TRIGGER"
        )
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_TOKEN, fields=["page_token"]):
        client.list_sessions_page(parent=parent, page_token="garbage")
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_PAGE_SIZE, fields=["page_size"]):
        client.list_sessions_page(parent=parent, page_size=-1)


def test_disabled_session_refuses_updates_until_enabled(
    client: SessionsClient, parent: str, agent: str
) -> None:
    s = client.create_session(parent=parent, session=Session(kind=TRIGGER, agent=agent))
    client.update_session(session=Session(name=s.name, enabled=False))
    with expect_error(grpc.StatusCode.FAILED_PRECONDITION, Reason.SESSION_DISABLED):
        client.update_session(session=Session(name=s.name, display_name="x"))
    enabled = client.update_session(session=Session(name=s.name, enabled=True, display_name="back"))
    assert enabled.enabled
    assert enabled.display_name == "back"
