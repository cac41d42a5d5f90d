"""Command-line options of the CLI's sub-commands: argument types, and options derived from the
fields of a configuration dataclass, so that each default has one home (the dataclass).

:func:`add_fields` adds one option per field named (``--batch-size`` for ``batch_size``), its
type read from the field's annotation unless a :class:`Flag` gives a parser, its default the
field's; :func:`field_values` reads the parsed values back, ready for the dataclass:

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     batch_size: int = 512
...     rate: float | None = None
...     kinds: tuple[str, ...] = ("click",)
...     verbose: bool = True
>>> parser = argparse.ArgumentParser(prog="demo")
>>> add_fields(parser, Demo, {
...     "batch_size": Flag("messages per step", positive_int),
...     "rate": Flag(),
...     "kinds": Flag("comma-separated"),
...     "verbose": Flag(name="--quiet"),
... })
>>> Demo(**field_values(parser.parse_args(["--rate", "0.5", "--kinds", "click,buy"]), Demo))
Demo(batch_size=512, rate=0.5, kinds=('click', 'buy'), verbose=True)
>>> Demo(**field_values(parser.parse_args(["--quiet"]), Demo))
Demo(batch_size=512, rate=None, kinds=('click',), verbose=False)
>>> positive_int("3"), positive_seconds("0.5")
(3, 0.5)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def comma_separated(text: str) -> tuple[str, ...]:
    """``"din, dare,"`` → ``("din", "dare")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Flag:
    """How a dataclass field appears on the command line: its help, its parser where the
    field's annotation is not enough (e.g. :func:`positive_int`), its choices, and its name
    where that is not ``--field-name`` (a bool field that defaults to True: ``--no-field-name``).
    """

    help: str | None = None
    type: Callable[[str], Any] | None = None
    name: str | None = None
    choices: Sequence[str] | None = None


class Options(Protocol):
    """An argument parser or one of its groups."""

    def add_argument(self, *names: str, **kwargs: Any) -> Any: ...


def add_fields(
    options: Options,
    cls: type,
    flags: Mapping[str, Flag],
    defaults: Mapping[str, object] | None = None,
) -> None:
    """One option per field of ``cls`` named in ``flags``, in that order; its destination is the
    field's name, its default the field's (``defaults`` override them). A field without a
    default is a required option."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, flag in flags.items():
        default = (defaults or {}).get(name, _default(known[name]))
        option, settings = _option(name, flag, hints[name], default)
        options.add_argument(option, **settings)


def field_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed value of each field of ``cls`` that :func:`add_fields` made an option of."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def _default(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _option(name: str, flag: Flag, hint: Any, default: object) -> tuple[str, dict[str, Any]]:
    """The option's name and ``add_argument`` settings for one field."""
    dashed = name.replace("_", "-")
    settings: dict[str, Any] = {"dest": name}
    if hint is bool:
        switch = "--no-" + dashed if default is True else "--" + dashed
        settings |= {"action": "store_false" if default is True else "store_true"}
        return flag.name or switch, settings | {"help": flag.help, "default": default}
    if default is dataclasses.MISSING:
        settings["required"] = True
    else:
        settings["default"] = default
    settings["type"] = flag.type or _parser(hint)
    settings["help"] = _help(flag.help, default)
    if flag.choices is not None:
        settings["choices"] = flag.choices
    if flag.name is not None:
        settings["metavar"] = flag.name.lstrip("-").replace("-", "_").upper()
    return flag.name or "--" + dashed, settings


def _parser(hint: Any) -> Callable[[str], Any]:
    """The parser of a field's annotation: ``int | None`` → ``int``, ``tuple[str, ...]`` → comma
    separated, ``int``, ``float``, ``str``, ``Path`` → themselves."""
    if isinstance(hint, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return comma_separated
    if hint in (int, float, str, Path):
        return typing.cast(Callable[[str], Any], hint)
    raise TypeError(f"no command-line parser for {hint!r}: give the Flag a type")


def _help(text: str | None, default: object) -> str | None:
    """The help text, with the default when there is one (``%`` escaped for argparse)."""
    if default is None or default is dataclasses.MISSING:
        return text
    shown = ",".join(default) if isinstance(default, tuple) else str(default)
    suffix = f"default: {shown}".replace("%", "%%")
    return f"{text} ({suffix})" if text else suffix
