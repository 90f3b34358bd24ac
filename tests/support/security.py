"""Credentials for security tests: bearer tokens, auth files, TLS certificates.

Auth files are written here by hand (TOML text and ``hashlib``), not with the server's own
helpers, so the tests check the documented format rather than the code against itself.
Certificates come from ``trustme``: a throwaway CA per test that issues server and client
certificates.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

ROLES = ("reader", "writer", "system", "admin")


@dataclass(frozen=True)
class Credential:
    """One principal of an auth file, with the bearer token the test holds for it."""

    id: str
    role: str
    namespaces: tuple[str, ...]
    token: str

    @classmethod
    def new(cls, principal_id: str, role: str, namespaces: Sequence[str]) -> Credential:
        return cls(principal_id, role, tuple(namespaces), secrets.token_urlsafe(32))

    def toml(self) -> str:
        """Its `[[principal]]` table, in the documented format."""
        digest = hashlib.sha256(self.token.encode()).hexdigest()
        return (
            "[[principal]]\n"
            f"id = {json.dumps(self.id)}\n"
            f"role = {json.dumps(self.role)}\n"
            f"namespaces = {json.dumps(list(self.namespaces))}\n"
            f'token_sha256 = "{digest}"\n'
        )


def write_auth_file(path: Path, credentials: Iterable[Credential]) -> Path:
    """Write an auth file holding `credentials` (replacing the file in one rename)."""
    staging = path.with_suffix(".tmp")
    staging.write_text("\n".join(c.toml() for c in credentials))
    staging.replace(path)
    return path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one TLS setup: the server's key and chain, the CA that signed it, and a
    client certificate (key + chain) signed by a second CA, the client CA."""

    server_cert: Path
    server_key: Path
    ca: Path
    client_cert: Path
    client_key: Path
    client_ca: Path

    def server_env(self, *, mutual: bool = False) -> dict[str, str]:
        env = {"TETHER_TLS_CERT_FILE": str(self.server_cert), "TETHER_TLS_KEY_FILE": str(self.server_key)}
        if mutual:
            env["TETHER_TLS_CLIENT_CA_FILE"] = str(self.client_ca)
        return env


def make_tls_files(directory: Path, server_names: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A server certificate for `server_names` and a client certificate, each from its own CA."""
    directory.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert(*server_names)
    client = client_ca.issue_cert("client@tether.test")
    files = TlsFiles(
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        ca=directory / "ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_ca=directory / "client-ca.pem",
    )
    files.server_cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(files.server_key))
    server_ca.cert_pem.write_to_path(str(files.ca))
    files.client_cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(files.client_key))
    client_ca.cert_pem.write_to_path(str(files.client_ca))
    return files
