"""Server configuration: `Settings`, read from `TETHER_*` environment variables and `tether serve` flags.

Each `Settings` field is one setting. Its `Field(description=...)` is the documentation: the
`tether serve` flag (`tether.server.options`) and the README "Configuration" table (written by
`python scripts/settings_doc.py`) are derived from the fields, so a new setting is a new field
and nothing else. Read the README table for what each setting means.

Database URLs: `normalize_database_url` (plain file paths are SQLite files; only SQLite and
PostgreSQL, with their async drivers). With `workers` > 1 an SQLite `:memory:` database
(private to one process) is refused. `exposure_problem()` says why a listen address beyond
loopback with neither an auth file nor TLS is refused (unless `allow_insecure`).

Not enforced yet: metrics arrive in a later release. The setting is parsed and
validated now, and the server logs a `setting_not_enforced` warning when it is set.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, FilePath, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_FILE = "tether.db"
# Seconds a server beyond loopback keeps answering after SIGTERM (health NOT_SERVING) before it
# closes its port: long enough for a load balancer's health check or endpoint update to move
# traffic away (Kubernetes removes a terminating pod from its endpoints within a second or two).
DEFAULT_SHUTDOWN_DRAIN = 5.0
# Set by `tether serve --workers N` for its worker processes (JSON of
# `tether.server.workers.WorkerSpec`); not a setting.
WORKER_ENV = "TETHER_WORKER_SPEC"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """`30d`, `12h`, `90m`, `3600s`, `1w` or bare seconds; other input (ISO 8601
    `P30D`, a timedelta) is left to pydantic's own timedelta parsing."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


# The async driver of each supported backend (the server is asyncio through and through).
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
# `sqlite:x.db`, `postgresql:host`: a URL missing its `//`, not a file name.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
DATABASE_URL_FORMS = (
    "use a file path (SQLite), sqlite:///FILE, sqlite:// (in memory) or postgresql://USER:PASSWORD@HOST/DB"
)


def normalize_database_url(value: str) -> str:
    """The SQLAlchemy URL for `value`, a database URL or a plain SQLite file path.

    Plain URLs get the async driver and SQLite paths become absolute, so the server and
    `tether migrate` agree on the file. ValueError (never naming the password) when
    `value` is not a database Tether can use.
    """
    value = value.strip()
    if not value:
        raise ValueError(f"empty; {DATABASE_URL_FORMS}")
    if "://" not in value:  # a path such as tether.db, data/tether.db or /var/lib/tether/tether.db
        if _SCHEME.match(value) and value != ":memory:":
            raise ValueError(f"not a valid URL (no // after the scheme); {DATABASE_URL_FORMS}")
        parsed = URL.create("sqlite+aiosqlite", database=value)
    else:
        try:
            parsed = make_url(value)
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            raise ValueError(f"not a valid URL ({exc}); {DATABASE_URL_FORMS}") from None
    backend, _, driver = parsed.drivername.partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    wanted = ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ValueError(f"unsupported database {backend!r}; {DATABASE_URL_FORMS}")
    if driver not in ("", wanted):
        raise ValueError(
            f"unsupported driver {parsed.drivername!r}: use {backend}:// or {backend}+{wanted}://"
        )
    parsed = parsed.set(drivername=f"{backend}+{wanted}")
    database = parsed.database or ""
    if backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        parsed = parsed.set(database=_sqlite_file(database))
    return parsed.render_as_string(hide_password=False)


def _sqlite_file(database: str) -> str:
    """The absolute path of an SQLite database file; ValueError when it cannot be one."""
    path = Path(database).expanduser().resolve()
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory, not an SQLite database file")
    if not path.parent.is_dir():
        raise ValueError(f"the directory of the SQLite database {str(path)!r} does not exist")
    return str(path)


def _default_database_url() -> str:
    return normalize_database_url(f"sqlite:///{DEFAULT_DATABASE_FILE}")


def _default_log_format() -> LogFormat:
    # Humans at a terminal get colours; containers and pipes get JSON lines.
    return "console" if sys.stderr.isatty() else "json"


class Settings(BaseSettings):
    """Everything `tether serve` needs. Each field is a setting: `description` (markdown) is its
    README text; `json_schema_extra` may name its `metavar`, its `flag` and a `default_doc` (for a
    computed default); see `tether.server.options`."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore", frozen=True)

    listen: str = Field(
        default=DEFAULT_LISTEN,
        description="gRPC address, `host:port` (port `0` picks a free one; the bound address is "
        "logged as the `serving` event)",
        json_schema_extra={"metavar": "HOST:PORT"},
    )
    database_url: str = Field(
        default_factory=_default_database_url,
        description="an SQLite file path (`/var/lib/tether/tether.db`, or `data/tether.db` relative to "
        "the working directory), `sqlite:///FILE`, `sqlite://` or `sqlite:///:memory:` (in memory, one "
        "process), or `postgresql://user:password@host:5432/db` (also `postgres://`). The async "
        "drivers (`+aiosqlite`, `+asyncpg`) are picked for you; any other database or driver is "
        "refused before start-up with exit code 2",
        json_schema_extra={
            "metavar": "URL",
            "default_doc": "SQLite file `tether.db` in the working directory",
        },
    )
    auth_file: FilePath | None = Field(
        default=None,
        description="TOML file of `[[principal]]` tables (`id`, `role`, `namespaces`, `token_sha256`); "
        "SIGHUP reloads it; see [Securing Tether](#securing-tether)",
        json_schema_extra={
            "metavar": "FILE",
            "default_doc": "none: every caller is an admin (refused beyond loopback)",
        },
    )
    tls_cert_file: FilePath | None = Field(
        default=None,
        description="PEM server certificate chain; with the key, the server speaks TLS",
        json_schema_extra={"metavar": "FILE", "default_doc": "none: plaintext"},
    )
    tls_key_file: FilePath | None = Field(
        default=None,
        description="PEM private key of that certificate (set both or neither)",
        json_schema_extra={"metavar": "FILE"},
    )
    tls_client_ca_file: FilePath | None = Field(
        default=None,
        description="PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)",
        json_schema_extra={"metavar": "FILE"},
    )
    allow_insecure: bool = Field(
        default=False,
        description="listen beyond loopback with neither an auth file nor TLS (every caller an admin, "
        "in plaintext; logged as a warning). Without it such a server refuses to start",
    )
    metrics_listen: str | None = Field(
        default=None,
        description="`host:port` of the Prometheus `/metrics` endpoint (not served yet)",
        json_schema_extra={"metavar": "HOST:PORT", "default_doc": "none: no metrics endpoint"},
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="`DEBUG`, `INFO`, `WARNING`, `ERROR`",
        json_schema_extra={"metavar": "LEVEL"},
    )
    log_format: LogFormat = Field(
        default_factory=_default_log_format,
        description="`json` (one object per line on stderr) or `console`",
        json_schema_extra={"metavar": "FORMAT", "default_doc": "`console` on a terminal, else `json`"},
    )
    retention: Duration = Field(
        default=timedelta(days=30),
        description="how long soft-deleted resources are kept before they are purged (`30d`, `12h`, "
        "`90m`, `3600s`, ISO 8601 `P30D`)",
    )
    request_id_ttl: Duration = Field(
        default=timedelta(hours=24),
        description="how long a `request_id` is remembered: a retry within it gets what the first call "
        "created",
    )
    migrate_on_start: bool = Field(
        default=True,
        description="apply migrations when the server starts",
        json_schema_extra={"flag": "--migrate"},
    )
    shutdown_drain: float | None = Field(
        default=None,
        ge=0,
        description="seconds the server keeps answering after SIGTERM/SIGINT, with health NOT_SERVING, "
        "before it closes its port (so a load balancer moves traffic away first); see "
        "[Stopping and rolling restarts](#stopping-and-rolling-restarts)",
        json_schema_extra={
            "metavar": "SECONDS",
            "default_doc": f"`0` on a loopback listen address, else `{DEFAULT_SHUTDOWN_DRAIN:g}`",
        },
    )
    shutdown_grace: float = Field(
        default=10.0, ge=0, description="seconds that in-flight calls get to finish once the port has closed"
    )
    db_pool_size: int = Field(
        default=10,
        ge=1,
        description="database connections per server process (a hard cap: replicas x pool size is the "
        "connection budget; on PostgreSQL a third, at least one, serve transactions and lists, the rest "
        "the hot single statements)",
    )
    health_interval: float = Field(
        default=1.0,
        gt=0,
        description="seconds between database pings; health is NOT_SERVING while the database does not "
        "answer",
    )
    sweep_interval: float = Field(
        default=60.0,
        ge=0,
        description="seconds between sweeps that soft-delete sessions past `expire_time` and purge "
        "resources past `purge_time` (replicas take turns); `0` turns this server's sweeper off (e.g. "
        "when another replica or a job sweeps)",
    )
    watch_poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="seconds between a process's looks at the change log when nothing woke it (the "
        "safety net under WatchSessions' wake-ups: writes of this process, and on PostgreSQL "
        "LISTEN/NOTIFY from the others)",
    )
    watch_retention: Duration = Field(
        default=timedelta(days=7),
        description="how long WatchSessions' changes are kept for resuming; the sweeper compacts older "
        "ones away (a resume point before them is OUT_OF_RANGE)",
    )
    watch_max_changes: int = Field(
        default=1_000_000,
        ge=1,
        description="how many of WatchSessions' changes are kept per namespace at most; the sweeper "
        "compacts the oldest beyond it away",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes sharing the listen port (SO_REUSEPORT), see "
        "[Worker processes](#worker-processes); at least `1`",
    )

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("retention", "request_id_ttl", "watch_retention")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.workers > 1 and is_sqlite_memory(self.database_url):
            raise ValueError(
                f"workers = {self.workers} needs a database the processes share: an SQLite in-memory "
                "database belongs to one process (use a file or PostgreSQL, or workers = 1)"
            )
        return self

    @property
    def drain_seconds(self) -> float:
        """`shutdown_drain`, or its default for the listen address when unset."""
        if self.shutdown_drain is not None:
            return self.shutdown_drain
        return 0.0 if is_loopback(self.listen) else DEFAULT_SHUTDOWN_DRAIN

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.tls_cert_file is not None

    def exposure_problem(self) -> str | None:
        """Why listening as configured is refused; None when it is fine (or explicitly allowed)."""
        if self.auth_file is not None or self.tls or is_loopback(self.listen):
            return None
        if self.allow_insecure:
            return None
        return (
            f"refusing to listen on {self.listen} (beyond loopback) with neither authentication nor TLS: "
            "set TETHER_AUTH_FILE and/or TETHER_TLS_CERT_FILE + TETHER_TLS_KEY_FILE, or pass "
            "--allow-insecure (TETHER_ALLOW_INSECURE=true) to serve every caller as an admin in plaintext"
        )

    def not_enforced(self) -> list[tuple[str, str]]:
        """(setting, what is not happening) for every set setting that a later release enforces."""
        notes: list[tuple[str, str]] = []
        if self.metrics_listen is not None:
            notes.append(("metrics_listen", "metrics are not served yet"))
        return notes


def is_sqlite_memory(url: str) -> bool:
    """Whether `url` is an in-memory SQLite database (`sqlite://`, `:memory:`, `mode=memory`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return database in ("", ":memory:") or parsed.query.get("mode") == "memory"


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts; ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def is_loopback(address: str) -> bool:
    """Whether `host:port` listens on loopback only (`localhost`, 127.0.0.0/8, `[::1]`)."""
    host, _ = split_host_port(address)
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other host name may resolve beyond loopback


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with `overrides` (e.g. CLI flags) winning; None means unset."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
