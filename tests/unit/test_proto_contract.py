"""The protos' comments and annotations (what `grpcurl describe` and generated docs show)
agree with the server: the roles of `policy.POLICY`, the etag read on input, and the
`CODE / REASON` pairs of `errors.CATALOGUE`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

import tether.v1
from tether.server import policy
from tether.server.auth import Role
from tether.server.errors import CATALOGUE, Reason
from tether.v1 import session_service_pb2 as pb

DESCRIPTOR_SET = Path(tether.v1.__file__).parent / "descriptor_set.binpb"
# FileDescriptorProto field numbers in SourceCodeInfo paths.
_SERVICE, _METHOD = 6, 2


def _tether_files() -> list[descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    return [f for f in files if f.package == "tether.v1"]


def _method_comments() -> dict[str, str]:
    (service_file,) = [f for f in _tether_files() if f.service]
    comments = {}
    for location in service_file.source_code_info.location:
        path = list(location.path)
        if len(path) == 4 and path[0] == _SERVICE and path[2] == _METHOD:
            method = service_file.service[path[1]].method[path[3]].name
            comments[method] = " ".join(location.leading_comments.split())
    return comments


def _all_comments() -> Iterator[str]:
    for f in _tether_files():
        for location in f.source_code_info.location:
            yield " ".join(location.leading_comments.split())


def test_admin_only_in_the_comments_is_exactly_the_admin_methods() -> None:
    comments = _method_comments()
    assert set(comments) == set(policy.POLICY)
    for method, rule in policy.POLICY.items():
        says_admin = "Admin only" in comments[method]
        assert says_admin == (rule.role == Role.ADMIN), (method, rule.role, comments[method])
    assert "may see" not in comments["ListNamespaces"]


def test_an_etag_read_from_the_resource_on_update_is_not_output_only() -> None:
    """AIP-154 / AIP-203: the resource's etag is sent back on update, so it is input too."""
    for request in (pb.UpdateSessionRequest, pb.UpdateParticipantRequest, pb.UpdateMemberRequest):
        resource = request.DESCRIPTOR.fields[0].message_type  # session, participant, member
        assert resource is not None
        assert _field_behaviour(resource.fields_by_name["etag"]) == ["OPTIONAL"], request.DESCRIPTOR.name


def _field_behaviour(field: FieldDescriptor) -> list[str]:
    """The `google.api.field_behavior` names of a field (read without google.api's stubs)."""
    for option, values in field.GetOptions().ListFields():
        if option.full_name == "google.api.field_behavior" and option.enum_type is not None:
            return [option.enum_type.values_by_number[v].name for v in values]
    return []


def test_every_code_and_reason_the_comments_cite_is_catalogued() -> None:
    cited = {
        (code, reason)
        for comment in _all_comments()
        for code, reason in re.findall(r"\b([A-Z][A-Z_]+) / ([A-Z][A-Z_]+)\b", comment)
    }
    assert ("FAILED_PRECONDITION", "TEMPLATE_MISMATCH") in cited
    assert ("INVALID_ARGUMENT", "IMMUTABLE_FIELD") in cited
    for code, reason in cited:
        assert reason in Reason.__members__, reason
        assert CATALOGUE[Reason(reason)][0].name == code, (code, reason)
