"""One list of settings: the `Settings` fields. The `tether serve` / `tether migrate` flags and
the README Configuration table are derived from them, a flag wins over its variable, and
database URLs (or plain SQLite paths) are checked when the settings load."""

from __future__ import annotations

import argparse
import importlib.util
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import Field, ValidationError

from tether.server import cli
from tether.server.config import Settings, normalize_database_url
from tether.server.options import Option, options

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "settings_doc.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_doc", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[command]
    return found


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """option string -> dest, without -h/--help."""
    return {flag: a.dest for a in parser._actions for flag in a.option_strings if a.dest != "help"}


def test_readme_table_is_generated_from_settings() -> None:
    doc = _script()
    readme = doc.README.read_text()
    assert readme == doc.render(readme), "run: python scripts/settings_doc.py"
    for option in options():  # and each row names the variable, its flags and the default
        assert doc.row(option) in readme


def test_serve_has_exactly_one_flag_set_per_setting() -> None:
    expected = {flag: o.name for o in options() for flag in o.flags}
    assert _flags(_subparser("serve")) == expected
    assert set(expected.values()) == set(Settings.model_fields)


def test_migrate_has_the_database_settings_only() -> None:
    assert set(_flags(_subparser("migrate")).values()) == {"database_url", "log_level", "log_format"}


def test_the_existing_spellings_are_kept() -> None:
    by_name = {o.name: o for o in options()}
    assert by_name["migrate_on_start"].flags == ("--migrate", "--no-migrate")
    assert by_name["migrate_on_start"].env == "TETHER_MIGRATE_ON_START"
    assert by_name["allow_insecure"].flags[0] == "--allow-insecure"
    assert by_name["database_url"].flags == ("--database-url",)
    assert by_name["retention"].default == "`30d`"


def test_a_new_setting_needs_only_its_field() -> None:
    class Extended(Settings):
        drain_delay: float = Field(default=0.0, ge=0, description="seconds `NOT_SERVING` before draining")

    assert options(Extended)[-1] == Option(
        name="drain_delay",
        env="TETHER_DRAIN_DELAY",
        flag="--drain-delay",
        metavar="SECONDS",
        default="`0`",
        description="seconds `NOT_SERVING` before draining",
    )
    assert (
        options(Extended)[-1].help == "seconds NOT_SERVING before draining (default: 0) [TETHER_DRAIN_DELAY]"
    )


def test_a_setting_without_a_description_is_refused() -> None:
    class Undocumented(Settings):
        mystery: int = 1

    with pytest.raises(TypeError, match=r"Settings\.mystery needs Field"):
        options(Undocumented)


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"TETHER_RETENTION": "1d"}, [], {"retention": timedelta(days=1)}),
        ({"TETHER_RETENTION": "1d"}, ["--retention", "2h"], {"retention": timedelta(hours=2)}),
        ({"TETHER_MIGRATE_ON_START": "false"}, [], {"migrate_on_start": False}),
        ({"TETHER_MIGRATE_ON_START": "false"}, ["--migrate"], {"migrate_on_start": True}),
        ({}, ["--no-migrate"], {"migrate_on_start": False}),
        ({"TETHER_ALLOW_INSECURE": "true"}, ["--no-allow-insecure"], {"allow_insecure": False}),
        ({}, ["--allow-insecure"], {"allow_insecure": True}),
        ({"TETHER_WORKERS": "3"}, ["--workers", "2"], {"workers": 2}),
    ],
)
def test_a_flag_wins_over_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], expected: dict[str, object]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = cli._settings(cli.build_parser().parse_args(["serve", *args]))
    assert settings is not None
    assert {name: getattr(settings, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("given", "path"),
    [("tether.db", "tether.db"), ("data/tether.db", "data/tether.db"), ("sqlite:///rel.db", "rel.db")],
)
def test_relative_sqlite_paths_become_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given: str, path: str
) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert normalize_database_url(given) == f"sqlite+aiosqlite:///{tmp_path / path}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/var/tmp/x.db", "sqlite+aiosqlite:////var/tmp/x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///%3Amemory%3A"),
        (":memory:", "sqlite+aiosqlite:///%3Amemory%3A"),
        ("postgres://u:p@db/tether", "postgresql+asyncpg://u:p@db/tether"),
        ("postgresql://db:5433/tether", "postgresql+asyncpg://db:5433/tether"),
        ("postgresql+asyncpg://db/tether", "postgresql+asyncpg://db/tether"),
    ],
)
def test_database_urls(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize(
    "given",
    ["mysql://db/x", "foo://", "sqlite+pysqlite:///x.db", "postgres:db", "", "  ", "/no/such/dir/x.db"],
)
def test_unusable_database_urls_fail_validation(given: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(database_url=given)
    assert [error["loc"] for error in info.value.errors()] == [("database_url",)]


def test_a_bad_url_error_never_shows_the_password() -> None:
    with pytest.raises(ValueError, match="not a valid URL") as info:
        normalize_database_url("postgresql://tether:s3cret@db:port/tether")
    assert "s3cret" not in str(info.value)
    assert cli._without_password("postgresql://tether:s3cret@db/x") == "postgresql://tether:***@db/x"
