"""The settings as command-line options and README rows, derived from the `Settings` fields.

A field's environment variable is `TETHER_` + its name in capitals; its flag is `--` + its
name in kebab case (or `json_schema_extra["flag"]`); a `bool` field is a `--flag` /
`--no-flag` switch. The metavar comes from `json_schema_extra["metavar"]`, else from the
type (`int` N, `float` SECONDS, a duration DURATION). The default shown is the field's
default, or `json_schema_extra["default_doc"]` for a computed one. `description` (markdown)
is the help text and the README "meaning".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic.fields import FieldInfo

from tether.server.config import Settings

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_METAVARS: dict[Any, str] = {int: "N", float: "SECONDS", timedelta: "DURATION"}
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")


@dataclass(frozen=True)
class Option:
    """One setting as the command line and the README show it."""

    name: str  # the Settings field
    env: str
    flag: str
    metavar: str | None  # None: a --flag / --no-flag switch
    default: str  # markdown
    description: str  # markdown

    @property
    def flags(self) -> tuple[str, ...]:
        if self.metavar is None:
            return (self.flag, "--no-" + self.flag.removeprefix("--"))
        return (self.flag,)

    @property
    def help(self) -> str:
        """Plain text for `--help` (argparse %-formats it, hence the doubled %)."""
        text = f"{plain(self.description)} (default: {plain(self.default)}) [{self.env}]"
        return text.replace("%", "%%")


def options(settings: type[Settings] = Settings) -> list[Option]:
    """Every setting, in field order."""
    prefix = settings.model_config.get("env_prefix", "")
    return [_option(name, field, prefix) for name, field in settings.model_fields.items()]


def add_options(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """Add the flags of the settings `names` (default: all) to `parser`; unset flags stay None,
    so the environment (or the default) decides."""
    wanted = None if names is None else set(names)
    for option in options():
        if wanted is not None and option.name not in wanted:
            continue
        if option.metavar is None:
            parser.add_argument(
                option.flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=option.help,
            )
        else:
            parser.add_argument(
                option.flag, dest=option.name, metavar=option.metavar, default=None, help=option.help
            )


def plain(markdown: str) -> str:
    """Markdown text without code quotes and links (their text stays)."""
    return _LINK.sub(r"\1", markdown).replace("`", "")


def format_duration(value: timedelta) -> str:
    """`30d`, `12h`, `90m`: in the largest unit that divides it."""
    seconds = value.total_seconds()
    for unit, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _option(name: str, field: FieldInfo, prefix: str) -> Option:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if not field.description:
        raise TypeError(f"Settings.{name} needs Field(description=...): it is its --help and README text")
    switch = field.annotation is bool
    metavar = None if switch else str(extra.get("metavar") or _METAVARS.get(field.annotation, "VALUE"))
    return Option(
        name=name,
        env=f"{prefix}{name}".upper(),
        flag=str(extra.get("flag") or "--" + name.replace("_", "-")),
        metavar=metavar,
        default=str(extra.get("default_doc") or _default(name, field)),
        description=field.description,
    )


def _default(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        raise TypeError(
            f"Settings.{name} has a computed default: describe it in json_schema_extra default_doc"
        )
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"
