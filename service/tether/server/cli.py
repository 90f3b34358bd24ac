"""`tether` command line: serve, migrate, health, token (and `tether --version`).

    tether serve   [--listen HOST:PORT] [--database-url URL] [--auth-file FILE] [--allow-insecure]
                   [--workers N] ...
    tether migrate [--database-url URL]
    tether health  [--target HOST:PORT] [--timeout SECONDS] [--service NAME]
                   [--tls] [--ca-file PEM] [--cert-file PEM --key-file PEM] [--server-name NAME]
    tether token   --id ID [--role ROLE] [--namespace NS ...] [--token-file FILE]

Every `serve` flag overrides its `TETHER_*` environment variable; both are derived
from the `Settings` fields (`tether.server.options`). Exit codes: 0 success (health: SERVING), 1 failure
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
import importlib.metadata
import os
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from tether.server import auth, options
from tether.server.config import DEFAULT_LISTEN, WORKER_ENV, Settings, load_settings, split_host_port
from tether.server.log import configure_logging, get_logger
from tether.v1 import session_service_pb2

# The services a Tether server reports health for, besides "" (the whole server).
SESSION_SERVICE_NAME = session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name

# The settings of the commands that touch the database without serving; `serve` takes all.
_DATABASE_SETTINGS = ("database_url", "log_level", "log_format")


def _version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="tether", description="Tether: conversation sessions over gRPC.")
    parser.add_argument("--version", action="version", version=f"tether {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    options.add_options(serve)

    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    options.add_options(migrate, _DATABASE_SETTINGS)

    health = commands.add_parser("health", help="check a running server; exit 0 when SERVING")
    health.add_argument(
        "--target", metavar="HOST:PORT", help=f"HOST:PORT (default: TETHER_LISTEN or {DEFAULT_LISTEN})"
    )
    health.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0, help="seconds (default: 5)")
    health.add_argument(
        "--service", metavar="NAME", default="", help='service name to check (default: "", the server)'
    )
    _add_health_tls_flags(health)

    token = commands.add_parser(
        "token", help="make a bearer token (to stderr) and print its [[principal]] lines (to stdout)"
    )
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
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="write the token to this new file (mode 0600) instead of stderr",
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
        named = {option.name: option for option in options.options()}
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            option = named.get(name)
            if option is None:  # a rule across settings
                print(f"  {message}", file=sys.stderr)
                continue
            given = repr(_without_password(error.get("input")))
            suffix = "" if given in message else f" (got {given})"
            print(f"  {option.flag} / {option.env}: {message}{suffix}", file=sys.stderr)
        return None


def _without_password(value: Any) -> Any:
    """`value` with the password of a `scheme://user:password@host` URL masked (for error output)."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", value) if isinstance(value, str) else value


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
            reason = _health_failure(exc, args.service) if isinstance(exc, grpc.Call) else str(exc)
            print(f"tether health: {target}: {reason}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_failure(call: grpc.Call, service: str) -> str:
    """`CODE: details`; where gRPC gives no details, what the code means for a health check."""
    code, details = call.code(), call.details()
    if details:
        return f"{code.name}: {details}"
    if code is grpc.StatusCode.NOT_FOUND:
        # The standard health service answers NOT_FOUND, without details, for a name it does not know.
        return (
            f"NOT_FOUND: service {service!r} is not served (a Tether server reports "
            f'"" for the whole server and {SESSION_SERVICE_NAME})'
        )
    return f"{code.name} (the server sent no details)"


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
    """A new token (to stderr, or a new 0600 `--token-file`) and its auth file lines (to stdout,
    checked by the auth file parser), so `tether token ... >> auth.toml` adds a principal."""
    role = auth.Role.parse(args.role)
    namespaces = args.namespaces or (["*"] if role is auth.Role.ADMIN else ["default"])
    token = secrets.token_urlsafe(32)
    lines = auth.principal_toml(args.id, role, namespaces, token)
    try:
        auth.parse_auth_file(lines, "tether token")
    except auth.AuthFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.token_file is None:
        print(f"token: {token}", file=sys.stderr)
        where = "The token above"
    else:
        try:
            _write_secret(args.token_file, token + "\n")
        except OSError as exc:
            print(f"tether token: --token-file {args.token_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        where = f"The token in {args.token_file}"
    print(
        f"# {where} is for the caller: it is stored nowhere else. The [[principal]] lines on stdout\n"
        "# go into the TETHER_AUTH_FILE; then send the server SIGHUP (kill -HUP <pid>) to load them.",
        file=sys.stderr,
    )
    # The blank line keeps `>> auth.toml` valid when the file does not end with a newline.
    print()
    print(lines, end="")
    return 0


def _write_secret(path: str, text: str) -> None:
    """Write `text` to a new file only its owner may read (never over an existing file)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


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
