"""Auth file parsing, token lookup, bearer metadata, the policy table and fail-closed settings,
without a server."""

from __future__ import annotations

import hashlib
import io
from contextlib import redirect_stderr, redirect_stdout

import grpc
import pytest

from tether.server import auth, cli, errors, policy
from tether.server.auth import ALL, AuthFileError, Principal, Role, parse_auth_file
from tether.server.config import Settings, is_loopback
from tether.v1 import session_service_pb2 as pb

HASH = hashlib.sha256(b"secret-token").hexdigest()


def entry(**fields: str) -> str:
    values = {"id": '"svc"', "role": '"writer"', "namespaces": '["acme"]', "token_sha256": f'"{HASH}"'}
    values.update(fields)
    return "[[principal]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v)


def test_a_good_file_maps_tokens_to_principals() -> None:
    admin_hash = hashlib.sha256(b"admin-token").hexdigest()
    text = entry() + entry(
        id='"root"', role='"admin"', namespaces='["*"]', token_sha256=f'"{admin_hash.upper()}"'
    )
    table = parse_auth_file(text)
    assert len(table) == 2
    assert table.lookup("secret-token") == Principal("svc", Role.WRITER, frozenset({"acme"}))
    assert table.lookup("admin-token") == Principal("root", Role.ADMIN, ALL)
    assert table.lookup("secret-token ") is None
    assert table.lookup("") is None


def test_an_empty_file_has_no_principals() -> None:
    table = parse_auth_file("")
    assert len(table) == 0
    assert table.lookup("anything") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[principal]]\nid = "svc"\nrole = writer\n', "at line 3"),
        ("[[principal]]\n" + "id = 'a'\n" * 2, "at line 3"),
        ("[server]\nport = 1\n", "unknown top-level key(s) server"),
        ('principal = "x"\n', "must be [[principal]] tables"),
        (entry(role=""), "principal[0] (id 'svc'): role: missing"),
        (entry(id=""), "principal[0]: id: missing"),
        (entry(extra='"x"'), "principal[0] (id 'svc'): extra: unknown key"),
        (entry(role='"root"'), "principal[0] (id 'svc'): role: must be one of reader, writer, system, admin"),
        (entry(role="1"), "role: must be a non-empty string"),
        (entry(id='"has space"'), "principal[0] (id 'has space'): id: must be"),
        (entry(token_sha256='"abc"'), "token_sha256: must be 64 hex digits"),
        (entry(token_sha256=f'"{HASH[:-1]}g"'), "token_sha256: must be 64 hex digits"),
        (entry(namespaces="[]"), "namespaces: must be a non-empty list"),
        (entry(namespaces='"acme"'), "namespaces: must be a non-empty list"),
        (entry(namespaces='["Acme"]'), "namespaces: 'Acme' is not a namespace id"),
        (entry(namespaces='["namespaces/acme"]'), "give the id ('acme')"),
        (entry(namespaces='["*", "acme"]'), '"*" (every namespace) cannot be combined'),
        (entry(role='"admin"'), 'an admin reaches every namespace: use ["*"]'),
        (entry() + entry(), "principal[1] (id 'svc'): id: duplicate of principal[0]"),
        (
            entry() + entry(id='"other"'),
            "principal[1] (id 'other'): token_sha256: same token as principal[0]",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_place(text: str, message: str) -> None:
    with pytest.raises(AuthFileError) as info:
        parse_auth_file(text, "auth file x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("auth file x.toml: ")


def test_a_token_pasted_as_its_hash_is_not_echoed() -> None:
    with pytest.raises(AuthFileError) as info:
        parse_auth_file(entry(token_sha256='"my-very-secret-token"'))
    assert "my-very-secret-token" not in str(info.value)


def test_roles_are_ordered() -> None:
    assert Role.READER < Role.WRITER < Role.SYSTEM < Role.ADMIN
    assert Principal("p", Role.SYSTEM, ALL).has_role(Role.WRITER)
    assert not Principal("p", Role.WRITER, ALL).has_role(Role.SYSTEM)
    assert Role.parse("System") is Role.SYSTEM


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer a b"),),
        (("authorization", "Bearer secret-token"), ("authorization", "Bearer secret-token")),
        (("authorization", "Bearer wrong-token"),),
    ],
)
def test_bad_credentials_are_unauthenticated(metadata: tuple[tuple[str, str], ...]) -> None:
    authenticator = auth.Authenticator(None, parse_auth_file(entry()))
    with pytest.raises(errors.ApiError) as info:
        authenticator.authenticate(metadata)
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.reason == errors.Reason.UNAUTHENTICATED
    presented = [value.partition(" ")[2] for _, value in metadata]
    assert not [token for token in presented if token and token in info.value.message]


def test_bearer_scheme_is_case_insensitive() -> None:
    authenticator = auth.Authenticator(None, parse_auth_file(entry()))
    assert authenticator.authenticate((("authorization", "bearer secret-token"),)).id == "svc"


def test_without_a_file_everyone_is_the_local_admin() -> None:
    assert auth.Authenticator.from_file(None).authenticate(()) == auth.LOCAL_ADMIN


def test_current_principal_outside_a_call_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        auth.current_principal()


def test_the_policy_covers_every_method_once() -> None:
    methods = [m.name for m in policy.SERVICE.methods]
    assert sorted(policy.POLICY) == sorted(methods)
    for method in policy.SERVICE.methods:
        rule = policy.POLICY[method.name]
        request = method.input_type
        for path, _ in rule.names:
            descriptor = request
            for part in path.split("."):
                field = descriptor.fields_by_name[part]  # KeyError: a path that does not exist
                descriptor = field.message_type or descriptor
            assert field.type == field.TYPE_STRING, f"{method.name}: {path}"
        # Reads are not mutating (and are all a reader may call); every other method is.
        is_read = method.name.startswith(("Get", "List", "BatchGet", "Watch"))
        assert rule.mutating == (not is_read), method.name
        assert is_read or rule.role > Role.READER, method.name


@pytest.mark.parametrize(
    ("name", "namespace"),
    [
        ("namespaces/acme", "acme"),
        ("namespaces/acme/sessions/s1", "acme"),
        ("namespaces/acme/sessions/s1/members/p", "acme"),
        ("namespaces/Acme/sessions/s1", None),
        ("namespaces//sessions/s1", None),
        ("sessions/s1", None),
        ("", None),
    ],
)
def test_namespace_of_a_name(name: str, namespace: str | None) -> None:
    assert policy.namespace_of(name) == namespace


def test_guard_hides_other_namespaces_before_checking_the_role() -> None:
    guard = policy.AccessPolicy(auth.Authenticator(None, None))
    reader = Principal("r", Role.READER, frozenset({"acme"}))
    method = f"/{policy.SERVICE.full_name}/DeleteSession"
    with pytest.raises(errors.ApiError) as hidden:
        guard.authorize(method, pb.DeleteSessionRequest(name="namespaces/globex/sessions/s"), reader)
    assert (hidden.value.code, hidden.value.reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    with pytest.raises(errors.ApiError) as denied:
        guard.authorize(method, pb.DeleteSessionRequest(name="namespaces/acme/sessions/s"), reader)
    assert (denied.value.code, denied.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    # A malformed name is the handler's to reject (INVALID_ARGUMENT), not hidden.
    writer = Principal("w", Role.WRITER, frozenset({"acme"}))
    guard.authorize(method, pb.DeleteSessionRequest(name="bogus"), writer)
    with pytest.raises(errors.ApiError):
        guard.authorize("/tether.v1.SessionService/NoSuchMethod", pb.DeleteSessionRequest(), writer)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.1:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.1.2.3:1", False),
        ("tether.internal:1", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_a_wide_listen_address_needs_auth_tls_or_an_explicit_flag() -> None:
    assert Settings(listen="127.0.0.1:0").exposure_problem() is None
    problem = Settings(listen="0.0.0.0:0").exposure_problem()
    assert problem is not None
    assert "--allow-insecure" in problem
    assert Settings(listen="0.0.0.0:0", allow_insecure=True).exposure_problem() is None


def test_token_command_prints_lines_that_accept_its_token() -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert (
            cli.main(["token", "--id", "svc", "--role", "system", "--namespace", "a", "--namespace", "b"])
            == 0
        )
    token = err.getvalue().partition("\n")[0].removeprefix("token: ")
    principal = parse_auth_file(out.getvalue()).lookup(token)
    assert principal == Principal("svc", Role.SYSTEM, frozenset({"a", "b"}))
    assert token not in out.getvalue()
