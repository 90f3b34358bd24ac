"""Authentication: principals, the auth file, bearer tokens, the current principal.

The auth file (`TETHER_AUTH_FILE`) is TOML, one `[[principal]]` table per caller:

    [[principal]]
    id = "billing-service"          # shown in logs and audit lines
    role = "writer"                 # reader < writer < system < admin
    namespaces = ["acme", "globex"] # namespace ids, or ["*"] for every namespace
    token_sha256 = "9f86d0..."      # hex SHA-256 of the bearer token (never the token)

Admins reach every namespace, so an admin's `namespaces` must be `["*"]`.
`load_auth_file` refuses anything else with an `AuthFileError` naming the line
(TOML syntax) or the principal (index and id) and field.

A call authenticates with `authorization: Bearer <token>` metadata: the token
is hashed and compared with every configured hash in constant time
(`hmac.compare_digest`, no early exit). Tokens are never logged or quoted in
an error. Without an auth file every caller is `LOCAL_ADMIN`.

Handlers read the caller with `current_principal()`; the call guard
sets it (a `ContextVar`, so it is per call) before the handler runs.
"""

from __future__ import annotations

import contextvars
import enum
import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from tether.server import errors
from tether.server.log import get_logger
from tether.server.names import ID_RE

ALL: Literal["all"] = "all"
NamespaceSet: TypeAlias = frozenset[str] | Literal["all"]
PRINCIPAL_FIELDS = ("id", "role", "namespaces", "token_sha256")
PRINCIPAL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")
_HASH_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_BEARER_RE = re.compile(r"^bearer +(\S+) *$", re.IGNORECASE)


class Role(enum.IntEnum):
    """What a principal may do; each role may do everything the lower ones may."""

    READER = 1
    WRITER = 2
    SYSTEM = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        """The name used in the auth file and in messages: `reader`, ..."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named `value` (`reader`, `writer`, `system`, `admin`); ValueError otherwise."""
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"must be one of {', '.join(r.label for r in cls)}") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: `id`, `role`, and the namespace ids it may touch (or `ALL`)."""

    id: str
    role: Role
    namespaces: NamespaceSet

    def can_access(self, namespace: str) -> bool:
        """Whether the namespace (an id, not a name) is visible to this principal."""
        return self.namespaces == ALL or namespace in self.namespaces

    def has_role(self, role: Role) -> bool:
        """Whether this principal's role is `role` or above."""
        return self.role >= role


LOCAL_ADMIN = Principal("local", Role.ADMIN, ALL)
"""Every caller when no auth file is configured (local development on loopback)."""

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("tether_principal")


def current_principal() -> Principal:
    """The principal of the call being handled; RuntimeError outside an authenticated call."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no principal: not inside a call that passed the call guard") from None


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Make `principal` the current one for this call (the call guard does this)."""
    return _current.set(principal)


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token: what the auth file stores (as hex)."""
    return hashlib.sha256(token.encode()).digest()


# --- the auth file ------------------------------------------------------------------------------


class AuthFileError(ValueError):
    """The auth file cannot be used; the message says where and why (never a token)."""


@dataclass(frozen=True)
class PrincipalTable:
    """The configured principals with their token hashes."""

    entries: tuple[tuple[bytes, Principal], ...]

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal whose hash matches `token`; compares against every entry, always."""
        presented = token_digest(token)
        found: Principal | None = None
        for digest, principal in self.entries:
            if hmac.compare_digest(presented, digest):
                found = principal
        return found


def load_auth_file(path: Path) -> PrincipalTable:
    """Read and check the auth file; AuthFileError for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"auth file {path}: cannot be read: {exc}") from None
    return parse_auth_file(text, f"auth file {path}")


def parse_auth_file(text: str, source: str = "auth file") -> PrincipalTable:
    """The principals of an auth file's text; AuthFileError names the line or principal and field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends "(at line N, column M)" and never quotes the value.
        raise AuthFileError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"principal"})
    if unknown:
        raise AuthFileError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; only [[principal]] tables are allowed"
        )
    tables = document.get("principal", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise AuthFileError(f"{source}: `principal` must be [[principal]] tables")
    return _table(source, [_principal(source, i, t) for i, t in enumerate(tables)])


def _table(source: str, parsed: Sequence[tuple[bytes, Principal]]) -> PrincipalTable:
    """Refuse duplicate ids and duplicate token hashes."""
    ids: dict[str, int] = {}
    digests: dict[bytes, int] = {}
    for index, (digest, principal) in enumerate(parsed):
        if principal.id in ids:
            raise AuthFileError(
                f"{source}: principal[{index}] (id {principal.id!r}): id: duplicate of "
                f"principal[{ids[principal.id]}]"
            )
        if digest in digests:
            raise AuthFileError(
                f"{source}: principal[{index}] (id {principal.id!r}): token_sha256: same token "
                f"as principal[{digests[digest]}]; every principal needs its own token"
            )
        ids[principal.id] = index
        digests[digest] = index
    return PrincipalTable(tuple(parsed))


def _principal(source: str, index: int, table: Mapping[str, Any]) -> tuple[bytes, Principal]:
    """One `[[principal]]` table, checked field by field."""
    label = f"principal[{index}]"
    if isinstance(table.get("id"), str):
        label += f" (id {table['id']!r})"

    def fail(field: str, problem: str) -> AuthFileError:
        return AuthFileError(f"{source}: {label}: {field}: {problem}")

    unknown = sorted(set(table) - set(PRINCIPAL_FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown key; a principal has exactly {', '.join(PRINCIPAL_FIELDS)}")
    for key in PRINCIPAL_FIELDS:
        if key not in table:
            raise fail(key, "missing")
    principal_id = _string(table["id"], lambda p: fail("id", p))
    if not PRINCIPAL_ID_RE.fullmatch(principal_id):
        raise fail("id", "must be 1-128 letters, digits and . _ @ : - (starting with a letter or digit)")
    try:
        role = Role.parse(_string(table["role"], lambda p: fail("role", p)))
    except ValueError as exc:
        raise fail("role", f"{exc} (got {table['role']!r})") from None
    namespaces = _namespaces(table["namespaces"], role, lambda p: fail("namespaces", p))
    digest_hex = _string(table["token_sha256"], lambda p: fail("token_sha256", p))
    if not _HASH_RE.fullmatch(digest_hex):
        # Never echo the value: it might be a token pasted by mistake.
        raise fail(
            "token_sha256",
            "must be 64 hex digits: the SHA-256 of the token (see `tether token`), not the token",
        )
    return bytes.fromhex(digest_hex), Principal(principal_id, role, namespaces)


def _string(value: object, fail: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail("must be a non-empty string")
    return value


def _namespaces(value: object, role: Role, fail: Any) -> NamespaceSet:
    """`["*"]` (every namespace) or a non-empty list of namespace ids."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise fail('must be a non-empty list of namespace ids, or ["*"]')
    if "*" in value:
        if value != ["*"]:
            raise fail('"*" (every namespace) cannot be combined with namespace ids')
        return ALL
    if role is Role.ADMIN:
        raise fail('an admin reaches every namespace: use ["*"]')
    for item in value:
        if item.startswith("namespaces/"):
            raise fail(f"{item!r}: give the id ({item.removeprefix('namespaces/')!r}), not the resource name")
        if not ID_RE.fullmatch(item):
            raise fail(f"{item!r} is not a namespace id (lowercase letters, digits and -)")
    return frozenset(value)


def principal_toml(principal_id: str, role: Role, namespaces: Iterable[str], token: str) -> str:
    """The `[[principal]]` lines for the auth file (with the token's hash, never the token)."""
    # JSON strings are valid TOML basic strings.
    listed = ", ".join(json.dumps(n) for n in namespaces)
    return (
        "[[principal]]\n"
        f"id = {json.dumps(principal_id)}\n"
        f'role = "{role.label}"\n'
        f"namespaces = [{listed}]\n"
        f'token_sha256 = "{token_digest(token).hex()}"\n'
    )


# --- authenticating calls -----------------------------------------------------------------------


class Authenticator:
    """Maps a call's metadata to its principal.

    With an auth file: bearer tokens by their hashes; `reload()` (on SIGHUP)
    swaps in a fresh table only when the file is good. Without one: every
    caller is `LOCAL_ADMIN`.
    """

    def __init__(self, path: Path | None, table: PrincipalTable | None) -> None:
        self.path = path
        self._table = table
        self._log = get_logger()

    @classmethod
    def from_file(cls, path: Path | None) -> Authenticator:
        """Load `path` (AuthFileError when malformed); None: authentication off."""
        return cls(path, None if path is None else load_auth_file(path))

    @property
    def enabled(self) -> bool:
        return self._table is not None

    @property
    def principal_count(self) -> int:
        return 0 if self._table is None else len(self._table)

    def reload(self) -> bool:
        """Re-read the auth file; keep the current principals (and log why) if it is bad."""
        if self.path is None:
            self._log.warning("auth_reload_skipped", reason="no auth file is configured")
            return False
        try:
            table = load_auth_file(self.path)
        except AuthFileError as exc:
            self._log.error("auth_reload_failed", error=str(exc), principals=self.principal_count)
            return False
        self._table = table  # one reference swap: calls in flight keep the principal they have
        self._log.info("auth_reloaded", principals=len(table), path=str(self.path))
        return True

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller's principal; UNAUTHENTICATED when the token is missing, malformed or unknown."""
        table = self._table
        if table is None:
            return LOCAL_ADMIN
        token = bearer_token(metadata)
        principal = table.lookup(token)
        if principal is None:
            raise errors.unauthenticated("the bearer token is not recognised")
        return principal


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the one `authorization: Bearer <token>` entry; UNAUTHENTICATED otherwise."""
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        raise errors.unauthenticated("missing credentials: send `authorization: Bearer <token>` metadata")
    if len(values) > 1:
        raise errors.unauthenticated("more than one `authorization` metadata entry")
    value = values[0]
    match = _BEARER_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise errors.unauthenticated("malformed `authorization` metadata: expected `Bearer <token>`")
    return match.group(1)
