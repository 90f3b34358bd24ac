"""`tether` command line: serve, migrate, health, token.

    tether serve   [--listen HOST:PORT] [--database-url URL] [--auth-file FILE] [--allow-insecure]
                   [--workers N] ...
    tether migrate [--database-url URL]
    tether health  [--target HOST:PORT] [--timeout SECONDS] [--service NAME]
                   [--tls] [--ca-file PEM] [--cert-file PEM --key-file PEM] [--server-name NAME]
    tether token   --id ID [--role ROLE] [--namespace NS ...]

Every `serve` flag overrides its `TETHER_*` environment variable (see
`tether.server.config`). Exit codes: 0 success (health: SERVING), 1 failure
(health: anything else; serve: also a stop that outlived drain + grace + 5 s),
2 bad usage or configuration; serve stopped at once by a second signal:
128 + the signal number (143 SIGTERM, 130 SIGINT).

`tether serve --workers N` (N > 1) supervises N server processes on one port
(`tether.server.workers`); each of them is `tether serve` again, told so by
the environment variable `tether.server.config.WORKER_ENV`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from tether.server import auth
from tether.server.config import DEFAULT_LISTEN, WORKER_ENV, Settings, load_settings, split_host_port
from tether.server.log import configure_logging, get_logger

# (flag, metavar, help) for the settings every command that touches the database shares.
_DATABASE_FLAGS = (
    ("--database-url", "URL", "database URL: sqlite:///FILE or postgresql://... [TETHER_DATABASE_URL]"),
    ("--log-level", "LEVEL", "DEBUG, INFO, WARNING, ERROR [TETHER_LOG_LEVEL]"),
    ("--log-format", "FORMAT", "json or console [TETHER_LOG_FORMAT]"),
)
_SERVE_FLAGS = (
    ("--listen", "HOST:PORT", "HOST:PORT to listen on; port 0 picks one [TETHER_LISTEN]"),
    ("--auth-file", "FILE", "principals TOML; SIGHUP reloads it [TETHER_AUTH_FILE]"),
    ("--tls-cert-file", "FILE", "server certificate chain PEM: serve TLS [TETHER_TLS_CERT_FILE]"),
    ("--tls-key-file", "FILE", "server private key PEM [TETHER_TLS_KEY_FILE]"),
    (
        "--tls-client-ca-file",
        "FILE",
        "client CA PEM: require client certificates [TETHER_TLS_CLIENT_CA_FILE]",
    ),
    ("--metrics-listen", "HOST:PORT", "HOST:PORT for metrics (not served yet) [TETHER_METRICS_LISTEN]"),
    ("--retention", "DURATION", "how long deleted resources are kept: 30d, 12h, P30D [TETHER_RETENTION]"),
    ("--request-id-ttl", "DURATION", "how long request ids are remembered: 24h [TETHER_REQUEST_ID_TTL]"),
    (
        "--shutdown-drain",
        "SECONDS",
        "seconds of answering on after SIGTERM (health NOT_SERVING) before the port closes; "
        "default 0 on loopback, else 5 [TETHER_SHUTDOWN_DRAIN]",
    ),
    (
        "--shutdown-grace",
        "SECONDS",
        "seconds in-flight calls get once the port has closed [TETHER_SHUTDOWN_GRACE]",
    ),
    ("--db-pool-size", "N", "database connections [TETHER_DB_POOL_SIZE]"),
    ("--health-interval", "SECONDS", "seconds between database pings [TETHER_HEALTH_INTERVAL]"),
    (
        "--sweep-interval",
        "SECONDS",
        "seconds between expiry/purge sweeps; 0 disables [TETHER_SWEEP_INTERVAL]",
    ),
    ("--workers", "N", "server processes sharing the port (SO_REUSEPORT); default 1 [TETHER_WORKERS]"),
)


def _add_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, str, str]]) -> None:
    for flag, metavar, help_text in flags:
        parser.add_argument(flag, metavar=metavar, help=help_text, default=None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="tether", description="Tether: conversation sessions over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    _add_flags(serve, _SERVE_FLAGS + _DATABASE_FLAGS)
    serve.add_argument(
        "--migrate",
        dest="migrate_on_start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply migrations before serving (default: yes) [TETHER_MIGRATE_ON_START]",
    )
    serve.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help="serve beyond loopback with neither auth file nor TLS [TETHER_ALLOW_INSECURE]",
    )

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _add_flags(migrate, _DATABASE_FLAGS)

    health = commands.add_parser("health", help="check a running server; exit 0 when SERVING")
    health.add_argument(
        "--target", metavar="HOST:PORT", help=f"HOST:PORT (default: TETHER_LISTEN or {DEFAULT_LISTEN})"
    )
    health.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0, help="seconds (default: 5)")
    health.add_argument(
        "--service", metavar="NAME", default="", help='service name to check (default: "", the server)'
    )
    _add_health_tls_flags(health)

    token = commands.add_parser("token", help="print a new bearer token and its [[principal]] lines")
    token.add_argument("--id", required=True, help="the principal's id (shown in logs)")
    token.add_argument(
        "--role", default="reader", choices=[r.label for r in auth.Role], help="(default: reader)"
    )
    token.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help='a namespace id it may touch (repeatable; "*" for all; default: default, or * for admin)',
    )
    return parser


# (flag, environment variable, help) of the health probe's TLS settings.
_HEALTH_TLS_FLAGS = (
    (
        "--ca-file",
        "TETHER_HEALTH_CA_FILE",
        "PEM CA certificates to verify the server (default: system roots)",
    ),
    ("--cert-file", "TETHER_HEALTH_CERT_FILE", "PEM client certificate chain, for mutual TLS"),
    ("--key-file", "TETHER_HEALTH_KEY_FILE", "PEM client private key, for mutual TLS"),
    ("--server-name", "TETHER_HEALTH_SERVER_NAME", "name to expect in the server certificate"),
)


def _add_health_tls_flags(health: argparse.ArgumentParser) -> None:
    health.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use TLS (default: when TETHER_TLS_CERT_FILE or any option below is set)",
    )
    for flag, env, help_text in _HEALTH_TLS_FLAGS:
        health.add_argument(flag, metavar="VALUE", default=os.environ.get(env), help=f"{help_text} [{env}]")


def _settings(args: argparse.Namespace) -> Settings | None:
    """Settings from the environment and the flags, or None after reporting what is wrong."""
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        print("tether: invalid configuration:", file=sys.stderr)
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            if not name:  # a rule across settings
                print(f"  {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
                continue
            flag, env = f"--{name.replace('_', '-')}", f"TETHER_{name.upper()}"
            given = repr(error.get("input"))
            suffix = "" if given in error["msg"] else f" (got {given})"
            print(f"  {flag} / {env}: {error['msg']}{suffix}", file=sys.stderr)
        return None


def _run(coroutine: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def _serve_and_exit(coroutine: Any) -> NoReturn:
    """Run a server (or supervisor) to its end, then end the process with its exit code at
    once: no cancelling of leftover tasks (one may wait on a database driver thread that
    cannot be interrupted) and no interpreter teardown (see `tether.server.app`)."""
    from tether.server.app import exit_process

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    exit_process(int(runner.run(coroutine)))


def _serve(args: argparse.Namespace) -> int:
    if os.environ.get(WORKER_ENV):  # one of the processes of `--workers N`
        return _serve_worker()
    settings = _settings(args)
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # The full server stack only for this command.
    if settings.workers > 1:
        from tether.server.workers import supervise

        _serve_and_exit(supervise(settings))
    from tether.server.app import serve

    _serve_and_exit(serve(settings))


def _serve_worker() -> NoReturn:
    """A worker: its settings come from its supervisor, which read the flags and environment."""
    from tether.server.workers import WorkerSpec, run_worker

    spec = WorkerSpec.from_environ(os.environ)
    assert spec is not None
    settings = spec.settings
    configure_logging(settings.log_level, settings.log_format, fields={"worker": spec.index})
    _serve_and_exit(run_worker(spec))


def _migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from tether.server.db.migrate import migrate

    try:
        _run(migrate(settings.database_url))
    except Exception as exc:
        get_logger().error("migration_failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def health_target(listen: str) -> str:
    """Where to reach a server listening on `listen`: wildcard hosts become loopback."""
    host, port = split_host_port(listen)
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"


def _health(args: argparse.Namespace) -> int:
    try:
        target = args.target or health_target(_listen_from_env())
    except ValueError as exc:
        print(f"tether health: {exc}", file=sys.stderr)
        return 2
    try:
        credentials = _health_credentials(args)
    except (OSError, ValueError) as exc:
        print(f"tether health: {exc}", file=sys.stderr)
        return 2
    # No HTTP proxy for a health probe: it targets this host.
    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    channel = (
        grpc.insecure_channel(target, options=options)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else str(exc)
            print(f"tether health: {target}: {reason}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials for the probe, or None for plaintext; OSError/ValueError for bad files."""
    given = [args.ca_file, args.cert_file, args.key_file, args.server_name]
    tls = args.tls
    if tls is None:
        tls = bool(os.environ.get("TETHER_TLS_CERT_FILE")) or any(given)
    if not tls:
        return None
    if (args.cert_file is None) != (args.key_file is None):
        raise ValueError("--cert-file and --key-file go together (mutual TLS)")

    def read(path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(read(args.ca_file), read(args.key_file), read(args.cert_file))


def _token(args: argparse.Namespace) -> int:
    """Print a new token and the auth file lines for it (checked by the auth file parser)."""
    role = auth.Role.parse(args.role)
    namespaces = args.namespaces or (["*"] if role is auth.Role.ADMIN else ["default"])
    token = secrets.token_urlsafe(32)
    lines = auth.principal_toml(args.id, role, namespaces, token)
    try:
        auth.parse_auth_file(lines, "tether token")
    except auth.AuthFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"token: {token}")
    print()
    print("# Give the token above to the caller: it is not stored anywhere. Paste these lines into")
    print("# the TETHER_AUTH_FILE, then send the server SIGHUP (kill -HUP <pid>) to load them.")
    print(lines, end="")
    return 0


def _listen_from_env() -> str:
    # Only TETHER_LISTEN matters here: a probe must not fail over unrelated settings.
    return os.environ.get("TETHER_LISTEN", DEFAULT_LISTEN)


_COMMANDS = {"serve": _serve, "migrate": _migrate, "health": _health, "token": _token}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tether` console script."""
    args = build_parser().parse_args(argv)
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
