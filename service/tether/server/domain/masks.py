"""Update masks (AIP-134, AIP-161) resolved against a resource's field rules."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from tether.server.domain.validation import Violations
from tether.server.errors import shorten


@dataclass(frozen=True)
class FieldRules:
    """Which fields of a resource an update may touch."""

    mutable: frozenset[str]
    immutable: frozenset[str]
    output_only: frozenset[str]


@dataclass(frozen=True)
class ResolvedMask:
    """`mutable`: fields to write. `immutable`: immutable fields the request sets
    (or its mask names), which the write must find unchanged.

    One rule for immutable fields, with or without a mask (AIP-203): sending the
    stored value is no change, any other value is IMMUTABLE_FIELD naming the field."""

    mutable: frozenset[str]
    immutable: frozenset[str]


def resolve(
    resource: Message,
    mask: field_mask_pb2.FieldMask | None,
    rules: FieldRules,
    resource_path: str,
) -> ResolvedMask:
    """Absent mask: the fields set in `resource`; `*`: every mutable field; else the
    paths named, where an immutable path holds the value the field must still have."""
    if mask is None:
        present = {descriptor.name for descriptor, _ in resource.ListFields()}
        return ResolvedMask(frozenset(present & rules.mutable), frozenset(present & rules.immutable))
    paths = list(mask.paths)
    violations = Violations()
    if "*" in paths:
        if len(paths) > 1:
            violations.add("update_mask", "`*` must be the only path")
        violations.check()
        present = {descriptor.name for descriptor, _ in resource.ListFields()}
        return ResolvedMask(rules.mutable, frozenset(present & rules.immutable))
    for path in paths:
        quoted = repr(shorten(path, 80))
        if path in rules.output_only or path in ("name", "uid", "etag"):
            violations.add("update_mask", f"{quoted} is output only")
        elif path not in rules.mutable and path not in rules.immutable:
            violations.add("update_mask", f"unknown field {quoted} of {resource_path}")
    if not paths:
        violations.add("update_mask", "must name at least one field")
    violations.check()
    return ResolvedMask(frozenset(paths) & rules.mutable, frozenset(paths) & rules.immutable)
