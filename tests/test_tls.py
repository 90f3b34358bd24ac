"""TLS, mutual TLS and failing closed: handshakes with certificates made for the test,
`tether health` and grpcurl over TLS, refused insecure and malformed configurations,
and `tether token` output that works as an auth file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest

from tests.support.errors import expect_error
from tests.support.security import TlsFiles, make_tls_files
from tests.support.server import SERVER_COMMAND, STARTUP_TIMEOUT_SECONDS, ServerFactory, ServerProcess
from tests.support.tools import describe, run_tool
from tether.client import Reason, SessionsClient

DEFAULT = "namespaces/default"


def health(
    server: ServerProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tether health` against `server`, without the developer's TETHER_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return run_tool(
        "tether",
        ["health", "--target", server.target, "--timeout", "10", *args],
        env={**clean, **(env or {})},
    )


def exit_code(server: ServerProcess) -> int:
    """Wait for a server that should refuse to start; its exit code."""
    return server.process.wait(STARTUP_TIMEOUT_SECONDS)


def tls_client(server: ServerProcess, files: TlsFiles, *, client_cert: bool = False) -> SessionsClient:
    """A client that trusts the test CA, presenting the client certificate when asked."""
    return SessionsClient(
        server.target,
        root_certificates=files.ca.read_bytes(),
        private_key=files.client_key.read_bytes() if client_cert else None,
        certificate_chain=files.client_cert.read_bytes() if client_cert else None,
        retry=False,
        timeout=10,
    )


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_handshake_health_and_grpcurl(server_factory: ServerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = server_factory(env=files.server_env())
    assert server.wait_for_event("serving", 5, tls=True, mutual_tls=False) is not None
    with tls_client(server, files) as client:
        assert client.get_namespace(name=DEFAULT).name == DEFAULT
    with (
        SessionsClient(server.target, retry=False, timeout=5) as plaintext,
        expect_error(grpc.StatusCode.UNAVAILABLE, ""),
    ):
        plaintext.get_namespace(name=DEFAULT)

    checked = health(server, "--ca-file", str(files.ca))
    assert (checked.returncode, checked.stdout.strip()) == (0, "SERVING"), describe(checked)
    from_env = health(server, "--tls", env={"TETHER_HEALTH_CA_FILE": str(files.ca)})
    assert from_env.returncode == 0, describe(from_env)
    untrusted = health(server, "--tls")  # system roots do not know the test CA
    assert untrusted.returncode == 1, describe(untrusted)
    plaintext_probe = health(server)
    assert plaintext_probe.returncode == 1, describe(plaintext_probe)

    listed = run_tool("grpcurl", ["-cacert", str(files.ca), server.target, "list"])
    assert listed.returncode == 0, describe(listed)
    assert "tether.v1.SessionService" in listed.stdout


def test_server_name_override(server_factory: ServerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path, server_names=("tether.test",))
    server = server_factory(env=files.server_env())
    wrong_name = health(server, "--ca-file", str(files.ca))
    assert wrong_name.returncode == 1, describe(wrong_name)
    named = health(server, "--ca-file", str(files.ca), "--server-name", "tether.test")
    assert named.returncode == 0, describe(named)
    override = [("grpc.ssl_target_name_override", "tether.test")]
    with SessionsClient(server.target, root_certificates=files.ca.read_bytes(), options=override) as client:
        assert client.get_namespace(name=DEFAULT).name == DEFAULT


def test_mutual_tls_requires_a_client_certificate(server_factory: ServerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = server_factory(env=files.server_env(mutual=True))
    assert server.wait_for_event("serving", 5, tls=True, mutual_tls=True) is not None
    with tls_client(server, files, client_cert=True) as client:
        assert client.get_namespace(name=DEFAULT).name == DEFAULT
    with tls_client(server, files) as anonymous, expect_error(grpc.StatusCode.UNAVAILABLE, ""):
        anonymous.get_namespace(name=DEFAULT)

    ca = ["--ca-file", str(files.ca)]
    without = health(server, *ca)
    assert without.returncode == 1, describe(without)
    with_cert = health(
        server, *ca, "--cert-file", str(files.client_cert), "--key-file", str(files.client_key)
    )
    assert with_cert.returncode == 0, describe(with_cert)
    tls_args = ["-cacert", str(files.ca), "-cert", str(files.client_cert), "-key", str(files.client_key)]
    listed = run_tool("grpcurl", [*tls_args, server.target, "list"])
    assert listed.returncode == 0, describe(listed)
    refused = run_tool("grpcurl", ["-cacert", str(files.ca), server.target, "list"])
    assert refused.returncode != 0, describe(refused)


def test_a_certificate_without_its_key_is_refused(server_factory: ServerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = server_factory(env={"TETHER_TLS_CERT_FILE": str(files.server_cert)}, wait=False)
    assert exit_code(server) == 2
    assert "tls_cert_file and tls_key_file go together" in server.log_text()


# --- failing closed -----------------------------------------------------------------------------


def test_a_wide_listen_address_without_auth_or_tls_is_refused(server_factory: ServerFactory) -> None:
    server = server_factory(env={"TETHER_LISTEN": "0.0.0.0:0"}, wait=False)
    assert exit_code(server) == 2
    refused = server.wait_for_event("insecure_listen_refused", 5)
    assert refused is not None, server.log_tail()
    assert "--allow-insecure" in refused["error"]
    assert "serving" not in server.log_text()


@pytest.mark.parametrize("how", ["env", "flag"])
def test_allow_insecure_starts_with_a_warning(server_factory: ServerFactory, how: str) -> None:
    env = {"TETHER_LISTEN": "0.0.0.0:0"}
    command: tuple[str, ...] = SERVER_COMMAND
    if how == "env":
        env["TETHER_ALLOW_INSECURE"] = "true"
    else:
        command = (*SERVER_COMMAND, "--allow-insecure")
    server = server_factory(env=env, command=command)
    warning = server.wait_for_event("insecure_listen_allowed", 5)
    assert warning is not None
    assert warning["level"] == "warning"
    with SessionsClient(server.target) as client:
        assert client.get_namespace(name=DEFAULT).name == DEFAULT


def test_tls_alone_allows_a_wide_listen_address(server_factory: ServerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server = server_factory(env={"TETHER_LISTEN": "0.0.0.0:0", **files.server_env()})
    assert server.wait_for_event("auth_disabled", 5) is not None
    with tls_client(server, files) as client:
        assert client.get_namespace(name=DEFAULT).name == DEFAULT


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[principal]]\nid = "svc"\nrole = "writer\n', "not valid TOML: "),
        ('[[principal]]\nid = "svc"\nrole = "root"\nnamespaces = ["default"]\ntoken_sha256 = "00"\n', "role"),
    ],
    ids=["syntax", "field"],
)
def test_a_malformed_auth_file_stops_the_server(
    server_factory: ServerFactory, tmp_path: Path, text: str, message: str
) -> None:
    auth_file = tmp_path / "auth.toml"
    auth_file.write_text(text)
    server = server_factory(env={"TETHER_AUTH_FILE": str(auth_file)}, wait=False)
    assert exit_code(server) == 2
    failure = server.wait_for_event("invalid_configuration", 5)
    assert failure is not None, server.log_tail()
    assert message in failure["error"]
    where = "line 3" if message.startswith("not valid") else "principal[0] (id 'svc'): role: must be one of"
    assert where in failure["error"]


# --- tether token -------------------------------------------------------------------------------


def test_token_output_works_as_an_auth_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    printed = run_tool("tether", ["token", "--id", "ci-bot", "--role", "writer", "--namespace", "default"])
    assert printed.returncode == 0, describe(printed)
    token = printed.stderr.partition("\n")[0].removeprefix("token: ")
    assert len(token) >= 43
    assert token not in printed.stdout
    auth_file = tmp_path / "auth.toml"
    auth_file.write_text(printed.stdout)
    # An auth file also allows listening beyond loopback.
    server = server_factory(env={"TETHER_AUTH_FILE": str(auth_file), "TETHER_LISTEN": "0.0.0.0:0"})
    with SessionsClient(server.target, token=token) as client:
        assert client.list_sessions_page(parent=DEFAULT).next_page_token == ""
        with expect_error(grpc.StatusCode.NOT_FOUND, Reason.NAMESPACE_NOT_FOUND):
            client.list_sessions_page(parent="namespaces/elsewhere")
    assert server.wait_for_event("auth_enabled", 5, principals=1) is not None
    assert token not in server.log_text()
