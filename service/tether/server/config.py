"""Server configuration: environment variables `TETHER_*`, each also a `tether serve` flag.

| setting | env var | default |
| --- | --- | --- |
| listen | TETHER_LISTEN | `127.0.0.1:50051` (port 0 picks a free port) |
| database_url | TETHER_DATABASE_URL | SQLite file `tether.db` in the working directory |
| auth_file | TETHER_AUTH_FILE | none: every caller is an admin (loopback only, see below) |
| tls_cert_file, tls_key_file | TETHER_TLS_CERT_FILE, _KEY_FILE | none (plaintext); both or none |
| tls_client_ca_file | TETHER_TLS_CLIENT_CA_FILE | none; set: clients need a certificate it signed (mTLS) |
| allow_insecure | TETHER_ALLOW_INSECURE | false: refuse a non-loopback listen address without auth or TLS |
| metrics_listen | TETHER_METRICS_LISTEN | none |
| log_level | TETHER_LOG_LEVEL | `INFO` |
| log_format | TETHER_LOG_FORMAT | `console` when stderr is a terminal, else `json` |
| retention | TETHER_RETENTION | `30d` (`30d`, `12h`, `90m`, `3600s`, seconds, or ISO 8601 `P30D`) |
| migrate_on_start | TETHER_MIGRATE_ON_START | true |
| shutdown_drain | TETHER_SHUTDOWN_DRAIN | SIGTERM: seconds NOT_SERVING but answering; 0 on loopback, else 5 |
| shutdown_grace | TETHER_SHUTDOWN_GRACE | 10 seconds for in-flight calls once the port has closed |
| db_pool_size | TETHER_DB_POOL_SIZE | 10 database connections per server (a hard cap: no overflow) |
| health_interval | TETHER_HEALTH_INTERVAL | 1 second between database pings |
| sweep_interval | TETHER_SWEEP_INTERVAL | 60 seconds between expiry/purge sweeps (0: no sweeping) |
| request_id_ttl | TETHER_REQUEST_ID_TTL | `24h`: how long a request id's response is replayed (AIP-155) |
| workers | TETHER_WORKERS | 1 server process; N > 1: N share the port (`tether.server.workers`) |

Database URLs: `postgres://` and `postgresql://` mean asyncpg (`postgresql+asyncpg://`),
`sqlite://` means aiosqlite; relative SQLite paths are made absolute when the
settings load, so the server and `tether migrate` agree on the file.

Workers: with `workers` > 1 each of the N processes has its own `db_pool_size`
connections, so N x pool size is the budget; an SQLite `:memory:` database
(private to one process) is refused.

Fail closed: `exposure_problem()` says why a listen address beyond loopback
with neither an auth file nor TLS is refused (unless `allow_insecure`).

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
from sqlalchemy.engine import make_url

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


def normalize_database_url(url: str) -> str:
    """Pick the async driver for plain URLs and make SQLite paths absolute."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql") and not driver:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        if not driver:
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            parsed = parsed.set(database=str(Path(database).expanduser().resolve()))
    return parsed.render_as_string(hide_password=False)


def _default_database_url() -> str:
    return normalize_database_url(f"sqlite:///{DEFAULT_DATABASE_FILE}")


def _default_log_format() -> LogFormat:
    # Humans at a terminal get colours; containers and pipes get JSON lines.
    return "console" if sys.stderr.isatty() else "json"


class Settings(BaseSettings):
    """Everything `tether serve` needs; see the module docstring for the table."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="ignore", frozen=True)

    listen: str = DEFAULT_LISTEN
    database_url: str = Field(default_factory=_default_database_url)
    auth_file: FilePath | None = None
    tls_cert_file: FilePath | None = None
    tls_key_file: FilePath | None = None
    tls_client_ca_file: FilePath | None = None
    allow_insecure: bool = False
    metrics_listen: str | None = None
    log_level: LogLevel = "INFO"
    log_format: LogFormat = Field(default_factory=_default_log_format)
    retention: Duration = timedelta(days=30)
    request_id_ttl: Duration = timedelta(hours=24)
    migrate_on_start: bool = True
    shutdown_drain: float | None = Field(
        default=None,
        ge=0,
        description=(
            "seconds the server keeps answering after SIGTERM, health NOT_SERVING, before it "
            "closes its port; default 0 on a loopback listen address (nothing balances it), "
            f"else {DEFAULT_SHUTDOWN_DRAIN:g}"
        ),
    )
    shutdown_grace: float = Field(default=10.0, ge=0)
    db_pool_size: int = Field(default=10, ge=1)
    health_interval: float = Field(default=1.0, gt=0)
    # 0 turns this replica's sweeper off (e.g. when another replica or a job sweeps).
    sweep_interval: float = Field(default=60.0, ge=0)
    # Server processes sharing the listen port (SO_REUSEPORT); 1: this process serves alone.
    workers: int = Field(default=1, ge=1)

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

    @field_validator("retention", "request_id_ttl")
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
