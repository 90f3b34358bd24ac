"""gRPC handlers of tether.v1.SessionService.

Each handler parses names, validates the request (collecting every bad field),
calls the data layer and converts rows back to messages. Errors are raised as
`ApiError`; the call guard (`interceptors.CallGuard`) turns them into rich statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from tether.server import auth, convert, errors, etags, names, watch
from tether.server.db import events as event_db
from tether.server.db import idempotency as idempotency_db
from tether.server.db import members as member_db
from tether.server.db import namespaces as namespace_db
from tether.server.db import participants as participant_db
from tether.server.db import purge as purge_db
from tether.server.db import sessions as session_db
from tether.server.db.base import Database, utcnow
from tether.server.db.write_condition import WriteCondition
from tether.server.domain import events as event_rules
from tether.server.domain import masks
from tether.server.domain import participants as participant_rules
from tether.server.domain import sessions as session_rules
from tether.server.domain.validation import MAX_EXTERNAL_ID, Violations
from tether.server.errors import Reason, shorten
from tether.server.listing import Lister
from tether.server.query import EVENT_FILTER_FIELDS, SESSION_FILTER_FIELDS, compile_filter
from tether.v1 import (
    event_pb2,
    namespace_pb2,
    participant_pb2,
    session_pb2,
    session_service_pb2_grpc,
)
from tether.v1 import (
    session_service_pb2 as pb,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_Response = TypeVar("_Response", bound=Message)
ROLES: dict[int, str] = {
    session_pb2.Member.ROLE_OWNER: "OWNER",
    session_pb2.Member.ROLE_MEMBER: "MEMBER",
    session_pb2.Member.ROLE_OBSERVER: "OBSERVER",
}
MAX_BATCH = 1000


def _may_manage() -> bool:
    """Only system and admin principals may set `managed` or change managed resources."""
    return auth.current_principal().has_role(auth.Role.SYSTEM)


def _check_may_set_managed(managed_requested: bool, path: str) -> None:
    if managed_requested and not _may_manage():
        raise errors.permission_denied(
            f"{path}: only system and admin principals may set managed", reason=Reason.MANAGED_RESOURCE
        )


def _mask(request: Any) -> Any:
    return request.update_mask if request.HasField("update_mask") else None


def _new_id(given: str, path: str, v: Violations) -> str:
    v.id(path, given)
    return given or names.new_id()


class SessionService(session_service_pb2_grpc.SessionServiceServicer):
    """The servicer; stateless apart from the database handle and the process's change hub."""

    def __init__(self, db: Database, request_id_ttl: timedelta, hub: watch.ChangeHub) -> None:
        self._db = db
        self._hub = hub
        self._lister = Lister(self._db)
        self._request_id_ttl = request_id_ttl

    @staticmethod
    def _write_condition(etag: str) -> WriteCondition:
        """The conditions of a write to an existing resource: the caller's etag, and
        whether the caller may change managed resources."""
        return WriteCondition(etags.parse(etag), may_manage=_may_manage())

    def _claim(self, scope: str, request: Any) -> idempotency_db.Claim | None:
        """The request id of a creating call (AIP-155), or None when it sent none."""
        return idempotency_db.new_claim(scope, request, self._request_id_ttl)

    async def _created(
        self,
        claim: idempotency_db.Claim | None,
        action: Callable[[], Awaitable[_Response]],
        replay: Callable[[str], Awaitable[_Response]],
    ) -> _Response:
        """Run a creating call whose data-layer write claims `claim`. A retry of an
        earlier call (the data layer found the claim, or the write was refused and the
        claim is there) answers what that call created, as it is now: `replay(name)`."""
        try:
            return await action()
        except idempotency_db.Replayed as replayed:
            return await replay(replayed.resource)
        except idempotency_db.Unclaimed as unclaimed:
            raise unclaimed.error from None
        except errors.ApiError:
            if claim is None:
                raise
            resource = await self._db.query(idempotency_db.taken, claim)
            if resource is None:
                raise
            return await replay(resource)

    # A resource by name: the Get* handlers, and what a replay answers.

    async def _namespace(self, name: str) -> namespace_pb2.Namespace:
        return convert.namespace_to_proto(await namespace_db.get(self._db, names.parse_namespace(name)))

    async def _participant(self, name: str) -> participant_pb2.Participant:
        ref = names.parse_participant(name)
        return convert.participant_to_proto(
            await participant_db.get(self._db, ref.namespace, ref.participant)
        )

    async def _session(self, name: str) -> session_pb2.Session:
        ref = names.parse_session(name)
        return convert.session_to_proto(await session_db.get(self._db, ref.namespace, ref.session))

    async def _member(self, name: str) -> session_pb2.Member:
        ref = names.parse_member(name)
        return convert.member_to_proto(
            await member_db.get(self._db, ref.namespace, ref.session, ref.participant)
        )

    # Namespaces --------------------------------------------------------

    async def CreateNamespace(
        self, request: pb.CreateNamespaceRequest, context: Context
    ) -> namespace_pb2.Namespace:
        v = Violations()
        v.id("namespace_id", request.namespace_id, required=True)
        v.request_id("request_id", request.request_id)
        v.text("namespace.display_name", request.namespace.display_name, 200)
        v.labels("namespace.labels", request.namespace.labels)
        v.check()
        now = utcnow()
        values = {
            "namespace": request.namespace_id,
            "uid": names.new_id(),
            "display_name": request.namespace.display_name,
            "labels": dict(request.namespace.labels),
            "create_time": now,
            "update_time": now,
            "version": 1,
        }
        if request.validate_only:
            return convert.namespace_to_proto(values)

        claim = self._claim("", request)

        async def create() -> namespace_pb2.Namespace:
            return convert.namespace_to_proto(await namespace_db.create(self._db, values, claim))

        return await self._created(claim, create, self._namespace)

    async def GetNamespace(
        self, request: pb.GetNamespaceRequest, context: Context
    ) -> namespace_pb2.Namespace:
        return await self._namespace(request.name)

    async def ListNamespaces(
        self, request: pb.ListNamespacesRequest, context: Context
    ) -> pb.ListNamespacesResponse:
        rows, token = await self._lister.namespaces(request.page_size, request.page_token)
        return pb.ListNamespacesResponse(
            namespaces=[convert.namespace_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteNamespace(self, request: pb.DeleteNamespaceRequest, context: Context) -> empty_pb2.Empty:
        namespace = names.parse_namespace(request.name)
        await namespace_db.delete_namespace(
            self._db, namespace, force=request.force, expected=etags.parse(request.etag)
        )
        return empty_pb2.Empty()

    # Participants ------------------------------------------------------

    def _new_participant(
        self, namespace: str, participant_id: str, p: participant_pb2.Participant, v: Violations
    ) -> dict[str, Any]:
        """The new participant's row; `p.kind` is the caller's to validate (it is
        `kind` in FindOrCreateParticipant, `participant.kind` in CreateParticipant)."""
        _check_may_set_managed(p.managed, "participant.managed")
        participant_rules.check_fields(p, "participant", v)
        v.check()  # every violation so far, then build values only from valid input
        return _participant_row(namespace, participant_id, p)

    def _participant_for_key(
        self, namespace: str, key: pb.FindOrCreateParticipantRequest, v: Violations
    ) -> dict[str, Any]:
        """The row of a participant FindOrCreateParticipant finds or creates."""
        template = _key_template(key, "", v)
        v.check()
        return _participant_row(namespace, names.new_id(), template)

    async def CreateParticipant(
        self, request: pb.CreateParticipantRequest, context: Context
    ) -> participant_pb2.Participant:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        participant_id = _new_id(request.participant_id, "participant_id", v)
        v.request_id("request_id", request.request_id)
        v.enum("participant.kind", request.participant.kind, participant_rules.KINDS)
        values = self._new_participant(namespace, participant_id, request.participant, v)
        v.check()
        if request.validate_only:
            await namespace_db.get(self._db, namespace)
            return convert.participant_to_proto(
                {**values, "delete_time": None, "purge_time": None, "version": 1}
            )

        claim = self._claim(namespace, request)

        async def create() -> participant_pb2.Participant:
            return convert.participant_to_proto(await participant_db.create(self._db, values, claim))

        return await self._created(claim, create, self._participant)

    async def GetParticipant(
        self, request: pb.GetParticipantRequest, context: Context
    ) -> participant_pb2.Participant:
        return await self._participant(request.name)

    async def ListParticipants(
        self, request: pb.ListParticipantsRequest, context: Context
    ) -> pb.ListParticipantsResponse:
        namespace = names.parse_namespace(request.parent, "parent")
        rows, token = await self._lister.participants(namespace, request)
        return pb.ListParticipantsResponse(
            participants=[convert.participant_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateParticipant(
        self, request: pb.UpdateParticipantRequest, context: Context
    ) -> participant_pb2.Participant:
        p = request.participant
        ref = names.parse_participant(p.name, "participant.name")
        mask = masks.resolve(p, _mask(request), participant_rules.RULES, "participant")
        v = Violations()
        _check_may_set_managed("managed" in mask.mutable and p.managed, "participant.managed")
        participant_rules.check_fields(p, "participant", v, mask.mutable)
        if "kind" in mask.immutable:
            v.enum("participant.kind", p.kind, participant_rules.KINDS, required=False)
        v.check()
        values = participant_rules.column_values(p, mask.mutable)
        kind = p.kind if "kind" in mask.immutable else None
        row = await participant_db.update_participant(
            self._db, ref.namespace, ref.participant, values, kind, self._write_condition(p.etag)
        )
        return convert.participant_to_proto(row)

    async def DeleteParticipant(
        self, request: pb.DeleteParticipantRequest, context: Context
    ) -> participant_pb2.Participant:
        ref = names.parse_participant(request.name)
        return convert.participant_to_proto(
            await participant_db.soft_delete(
                self._db, ref.namespace, ref.participant, self._write_condition(request.etag)
            )
        )

    async def UndeleteParticipant(
        self, request: pb.UndeleteParticipantRequest, context: Context
    ) -> participant_pb2.Participant:
        ref = names.parse_participant(request.name)
        return convert.participant_to_proto(
            await participant_db.undelete(
                self._db, ref.namespace, ref.participant, self._write_condition(request.etag)
            )
        )

    async def FindOrCreateParticipant(
        self, request: pb.FindOrCreateParticipantRequest, context: Context
    ) -> pb.FindOrCreateParticipantResponse:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        v.request_id("request_id", request.request_id)
        values = self._participant_for_key(namespace, request, v)
        v.check()

        claim = self._claim(namespace, request)

        async def find_or_create() -> pb.FindOrCreateParticipantResponse:
            row, created = await participant_db.find_or_create(self._db, values, claim)
            return pb.FindOrCreateParticipantResponse(
                participant=convert.participant_to_proto(row), created=created
            )

        async def replay(name: str) -> pb.FindOrCreateParticipantResponse:
            return pb.FindOrCreateParticipantResponse(participant=await self._participant(name), created=True)

        return await self._created(claim, find_or_create, replay)

    # Sessions ----------------------------------------------------------

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> session_pb2.Session:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        session_id = _new_id(request.session_id, "session_id", v)
        v.request_id("request_id", request.request_id)
        _check_may_set_managed(request.session.managed, "session.managed")
        new = session_rules.new_session(namespace, session_id, request.session, "session", v)
        v.check()
        if request.validate_only:
            await session_db.create(self._db, new.values, new.refs, None, validate_only=True)
            return convert.session_to_proto(
                {**new.values, "delete_time": None, "purge_time": None, "version": 1, "event_count": 0}
            )
        claim = self._claim(namespace, request)

        async def create() -> session_pb2.Session:
            return convert.session_to_proto(await session_db.create(self._db, new.values, new.refs, claim))

        return await self._created(claim, create, self._session)

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> session_pb2.Session:
        return await self._session(request.name)

    async def BatchGetSessions(
        self, request: pb.BatchGetSessionsRequest, context: Context
    ) -> pb.BatchGetSessionsResponse:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        if not request.names:
            v.add("names", "required")
        if len(request.names) > MAX_BATCH:
            v.add("names", f"at most {MAX_BATCH} names")
        ids: list[str] = []
        for i, name in enumerate(request.names):
            try:
                ref = names.parse_session(name, f"names[{i}]")
            except errors.ApiError as exc:
                v.items.extend(exc.violations)
                continue
            if namespace and ref.namespace != namespace:  # "": `parent` itself is reported
                v.add(f"names[{i}]", "must be a session of the namespace that `parent` names")
            ids.append(ref.session)
        v.check()
        rows = await session_db.batch_get(self._db, namespace, ids)
        return pb.BatchGetSessionsResponse(sessions=[convert.session_to_proto(r) for r in rows])

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        namespace = names.parse_namespace(request.parent, "parent")
        rows, token = await self._lister.sessions(namespace, request)
        return pb.ListSessionsResponse(
            sessions=[convert.session_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateSession(self, request: pb.UpdateSessionRequest, context: Context) -> session_pb2.Session:
        s = request.session
        ref = names.parse_session(s.name, "session.name")
        mask = masks.resolve(s, _mask(request), session_rules.RULES, "session")
        v = Violations()
        _check_may_set_managed("managed" in mask.mutable and s.managed, "session.managed")
        session_rules.check_update(s, mask, v)
        unchanged: dict[str, Any] = {}
        for field in mask.immutable:
            value = getattr(s, field)
            if field == "kind":
                v.enum("session.kind", value, session_rules.KINDS, required=False)
            else:
                value = session_rules.participant_id(value, ref.namespace, f"session.{field}", v)
            unchanged[field] = value
        v.check()
        values = session_rules.mutable_values(s, mask.mutable, utcnow())
        row = await session_db.update_session(
            self._db, ref.namespace, ref.session, values, unchanged, self._write_condition(s.etag)
        )
        return convert.session_to_proto(row)

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context: Context) -> session_pb2.Session:
        ref = names.parse_session(request.name)
        row = await session_db.soft_delete(
            self._db, ref.namespace, ref.session, self._write_condition(request.etag)
        )
        return convert.session_to_proto(row)

    async def UndeleteSession(
        self, request: pb.UndeleteSessionRequest, context: Context
    ) -> session_pb2.Session:
        ref = names.parse_session(request.name)
        row = await session_db.undelete(
            self._db, ref.namespace, ref.session, self._write_condition(request.etag)
        )
        return convert.session_to_proto(row)

    async def PurgeSessions(
        self, request: pb.PurgeSessionsRequest, context: Context
    ) -> pb.PurgeSessionsResponse:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        if not request.filter:
            v.add("filter", 'required; "*" matches every session')
        v.check()
        where = compile_filter(request.filter, SESSION_FILTER_FIELDS, namespace=namespace)
        await namespace_db.get(self._db, namespace)
        count, sample = await purge_db.purge_sessions(self._db, namespace, where, force=request.force)
        return pb.PurgeSessionsResponse(purge_count=count, purge_sample=sample)

    async def FindOrCreateSession(
        self, request: pb.FindOrCreateSessionRequest, context: Context
    ) -> pb.FindOrCreateSessionResponse:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        v.request_id("request_id", request.request_id)
        template = session_rules.template_for_key(request, namespace, v)
        _check_may_set_managed(template.managed, "session.managed")
        paths = session_rules.key_paths(request)
        new = session_rules.new_session(
            namespace, names.new_id(), template, "session", v, auto_created=True, key_paths=paths
        )
        v.check()
        values = new.values
        fixed = session_rules.template_fixed(request, values)
        target = _key_target(request, namespace, values)

        claim = self._claim(namespace, request)

        async def find_or_create() -> pb.FindOrCreateSessionResponse:
            row, created = await session_db.find_or_create(
                self._db,
                target,
                values,
                new.refs,
                claim,
                fixed=fixed,
                undelete_if_deleted=request.undelete_if_deleted,
            )
            return pb.FindOrCreateSessionResponse(session=convert.session_to_proto(row), created=created)

        async def replay(name: str) -> pb.FindOrCreateSessionResponse:
            return pb.FindOrCreateSessionResponse(session=await self._session(name), created=True)

        return await self._created(claim, find_or_create, replay)

    async def RecordActivity(
        self, request: pb.RecordActivityRequest, context: Context
    ) -> session_pb2.Session:
        ref = names.parse_session(request.name)
        when = utcnow()
        if request.HasField("activity_time"):
            v = Violations()
            v.timestamp("activity_time", request.activity_time)
            v.check()
            when = convert.to_datetime(request.activity_time)
        return convert.session_to_proto(
            await session_db.record_activity(self._db, ref.namespace, ref.session, when)
        )

    # Members -----------------------------------------------------------

    async def AddMember(self, request: pb.AddMemberRequest, context: Context) -> session_pb2.Member:
        v = Violations()
        ref = v.name(names.parse_session, request.parent, "parent", names.SessionName("", ""))
        v.request_id("request_id", request.request_id)
        v.enum("member.role", request.member.role, ROLES, required=False)
        if not request.member.participant:
            v.add("member.participant", "required")
        participant = session_rules.participant_id(
            request.member.participant, ref.namespace, "member.participant", v
        )
        v.check()
        assert participant is not None
        role = request.member.role or session_pb2.Member.ROLE_MEMBER

        claim = self._claim(ref.namespace, request)

        async def add() -> session_pb2.Member:
            condition = self._write_condition("")
            row = await member_db.add(
                self._db, ref.namespace, ref.session, participant, role, condition, claim
            )
            return convert.member_to_proto(row)

        return await self._created(claim, add, self._member)

    async def UpdateMember(self, request: pb.UpdateMemberRequest, context: Context) -> session_pb2.Member:
        ref = names.parse_member(request.member.name, "member.name")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else ["role"]
        v = Violations()
        for path in paths:
            if path not in ("role", "*"):
                v.add("update_mask", f"{shorten(path, 80)!r} is not a mutable field of member (only role is)")
        v.enum("member.role", request.member.role, ROLES)
        v.check()
        row = await member_db.update_role(
            self._db,
            ref.namespace,
            ref.session,
            ref.participant,
            request.member.role,
            self._write_condition(request.member.etag),
        )
        return convert.member_to_proto(row)

    async def RemoveMember(self, request: pb.RemoveMemberRequest, context: Context) -> empty_pb2.Empty:
        ref = names.parse_member(request.name)
        await member_db.remove(
            self._db, ref.namespace, ref.session, ref.participant, self._write_condition("")
        )
        return empty_pb2.Empty()

    async def ListMembers(self, request: pb.ListMembersRequest, context: Context) -> pb.ListMembersResponse:
        ref = names.parse_session(request.parent, "parent")
        rows, token = await self._lister.members(ref.namespace, ref.session, request)
        return pb.ListMembersResponse(
            members=[convert.member_to_proto(r) for r in rows], next_page_token=token
        )

    # Events ------------------------------------------------------------

    async def _event(self, name: str) -> event_pb2.Event:
        ref = names.parse_event(name)
        return convert.event_to_proto(await event_db.get(self._db, ref.namespace, ref.session, ref.event))

    def _session_key(
        self, request: pb.AppendEventRequest, namespace: str, author: str | None, v: Violations
    ) -> event_db.SessionKey | None:
        """AppendEvent's session key as FindOrCreateSession takes it, or None (by name).

        A DIRECT template without `user` takes the author as its user (`author`: the
        author's participant name, or for an author by key the name it gets if created;
        the data layer puts in the one it finds), so a DM's first message needs no
        earlier call."""
        key = request.WhichOneof("session_key")
        if key is None:
            if request.HasField("session"):
                v.add("session", "a template is only for a session_key (external_conversation or agent_pair)")
            return None
        find = pb.FindOrCreateSessionRequest(parent=request.parent, session=request.session)
        getattr(find, key).CopyFrom(getattr(request, key))
        template = session_rules.template_for_key(find, namespace, v)
        user_from_author = (
            template.kind == session_pb2.Session.KIND_DIRECT and not template.user and bool(author)
        )
        if user_from_author:
            template.user = author or ""
        _check_may_set_managed(template.managed, "session.managed")
        paths = session_rules.key_paths(find)
        new = session_rules.new_session(
            namespace, names.new_id(), template, "session", v, auto_created=True, key_paths=paths
        )
        fixed = session_rules.template_fixed(find, new.values)
        return event_db.SessionKey(
            _key_target(find, namespace, new.values), new.values, new.refs, fixed, user_from_author
        )

    async def AppendEvent(self, request: pb.AppendEventRequest, context: Context) -> pb.AppendEventResponse:
        v = Violations()
        session: str | None = None
        if request.WhichOneof("session_key") is None:
            ref = v.name(names.parse_session, request.parent, "parent", names.SessionName("", ""))
            namespace, session = ref.namespace, ref.session
        else:
            namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        v.id("event_id", request.event_id)
        v.request_id("request_id", request.request_id)
        if not request.HasField("event"):
            v.add("event", "required")
        event = request.event
        event_rules.check_event(event, "event", v)
        author, author_template = None, None
        author_name, new_author_id = event.author, ""
        if request.HasField("author_key"):
            new_author_id = names.new_id()  # the author's id if this call creates it
            if event.author:
                v.add("event.author", "set event.author or author_key, not both")
            author_template = _key_template(request.author_key, "author_key.", v)
            author_name = names.participant_name(namespace, new_author_id)
        elif event.author:
            author = session_rules.participant_id(event.author, namespace, "event.author", v)
        expected = request.expected_last_sequence if request.HasField("expected_last_sequence") else None
        if expected is not None and expected < 0:
            v.add("expected_last_sequence", f"must not be negative, got {expected}")
        session_key = self._session_key(request, namespace, author_name or None, v)
        v.check()
        author_key = None
        if author_template is not None:
            author_key = event_db.AuthorKey(_participant_row(namespace, new_author_id, author_template))
        claim = self._claim(namespace, request)
        plan = event_db.Append(
            namespace=namespace,
            session=session,
            session_key=session_key,
            author=author,
            author_key=author_key,
            event=event_rules.event_values(event, request.event_id, utcnow()),
            expected_last_sequence=expected,
            may_manage=_may_manage(),
            claim=claim,
        )

        async def append() -> pb.AppendEventResponse:
            done = await event_db.append(self._db, plan)
            return pb.AppendEventResponse(
                event=convert.event_to_proto(done.event),
                session=convert.session_to_proto(done.session),
                session_created=done.session_created,
                author_created=done.author_created,
            )

        async def replay(name: str) -> pb.AppendEventResponse:
            ref = names.parse_event(name)
            assert claim is not None
            flags = await event_db.also_created(self._db, claim)
            return pb.AppendEventResponse(
                event=await self._event(name),
                session=await self._session(names.session_name(ref.namespace, ref.session)),
                session_created="session_created" in flags,
                author_created="author_created" in flags,
            )

        return await self._created(claim, append, replay)

    async def GetEvent(self, request: pb.GetEventRequest, context: Context) -> event_pb2.Event:
        return await self._event(request.name)

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        ref = names.parse_session(request.parent, "parent")
        rows, token = await self._lister.events(ref.namespace, ref.session, request)
        return pb.ListEventsResponse(events=[convert.event_to_proto(r) for r in rows], next_page_token=token)

    async def DeleteEvent(self, request: pb.DeleteEventRequest, context: Context) -> empty_pb2.Empty:
        ref = names.parse_event(request.name)
        await event_db.delete_event(self._db, ref.namespace, ref.session, ref.event)
        return empty_pb2.Empty()

    async def PurgeEvents(self, request: pb.PurgeEventsRequest, context: Context) -> pb.PurgeEventsResponse:
        v = Violations()
        ref = v.name(names.parse_session, request.parent, "parent", names.SessionName("", ""))
        if not request.filter:
            v.add("filter", 'required; "*" matches every event')
        v.check()
        where = compile_filter(request.filter, EVENT_FILTER_FIELDS, namespace=ref.namespace)
        count, sample = await event_db.purge(self._db, ref.namespace, ref.session, where, force=request.force)
        return pb.PurgeEventsResponse(purge_count=count, purge_sample=sample)

    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchSessionsResponse]:
        v = Violations()
        namespace = v.name(names.parse_namespace, request.parent, "parent", "")
        if request.start_revision < 0:
            v.add("start_revision", "must not be negative (0 starts from now)")
        if request.HasField("read_mask"):
            for path in watch.Mask.violations(request.read_mask):
                v.add("read_mask", f"{shorten(path, 80)!r} is not a Session field")
        v.check()
        where = compile_filter(request.filter, SESSION_FILTER_FIELDS, namespace=namespace)
        mask = watch.Mask(request.read_mask if request.HasField("read_mask") else None)
        async for change in watch.follow(
            self._db, self._hub, namespace, request.start_revision, where, mask, context
        ):
            yield change


def _key_template(
    key: pb.FindOrCreateParticipantRequest | pb.AppendEventRequest.AuthorKey,
    prefix: str,
    v: Violations,
) -> participant_pb2.Participant:
    """The template of a participant found or created by key, with the key filled in;
    its violations recorded in `v` (nothing raised yet)."""
    v.enum(f"{prefix}kind", key.kind, participant_rules.KINDS)
    v.text(f"{prefix}external_id", key.external_id, MAX_EXTERNAL_ID, required=True)
    template = participant_pb2.Participant()
    template.CopyFrom(key.participant)
    for field, key_value in (("kind", key.kind), ("external_id", key.external_id)):
        current = getattr(template, field)
        if current and current != key_value:
            v.add(
                f"{prefix}participant.{field}",
                f"contradicts {prefix}{field} ({shorten(str(key_value), 80)!r})",
            )
    template.kind, template.external_id = key.kind, key.external_id
    _check_may_set_managed(template.managed, f"{prefix}participant.managed")
    participant_rules.check_fields(template, f"{prefix}participant", v)
    return template


def _participant_row(namespace: str, participant_id: str, p: participant_pb2.Participant) -> dict[str, Any]:
    """A new participant's row from a validated message."""
    now = utcnow()
    return {
        "namespace": namespace,
        "participant": participant_id,
        "uid": names.new_id(),
        "kind": p.kind,
        "create_time": now,
        "update_time": now,
        **participant_rules.column_values(p, participant_rules.RULES.mutable),
    }


def _key_target(
    request: pb.FindOrCreateSessionRequest, namespace: str, values: dict[str, Any]
) -> session_db.ConflictTarget:
    """The live unique key a FindOrCreateSession request finds its session by."""
    if request.WhichOneof("key") == "agent_pair":
        return session_db.agent_pair_target(namespace, values["agent_pair"])
    return session_db.conversation_target(
        namespace, values["agent"], values["channel"], values["external_conversation_id"]
    )


def build_servicer(db: Database, settings: Any, hub: watch.ChangeHub) -> SessionService:
    """What the server assembly registers."""
    return SessionService(db, settings.request_id_ttl, hub)
