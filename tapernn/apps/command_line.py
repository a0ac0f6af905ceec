"""Argument parsing shared by the `tapernn` commands (the CLI and its subcommand modules)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help line says its default: appended unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default is argparse.SUPPRESS
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            return text
        if action.nargs == 0:  # a flag
            default = "on" if action.default else "off"
        elif action.default is None:
            default = "none"
        else:
            default = "%(default)s"
        return f"{text} (default: {default})" if text else f"default: {default}"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; errors here are one line, exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a positive integer, else the option's one-line error saying so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def import_attribute(spec: str, option: str, error: type[Exception]) -> Any:
    """What `path.to.module:name` names (a user's `--model` factory, `--cell` class), else
    `error` in one line: malformed, the module failing to import (any exception of user code is
    a bad option, not a crash), or no such name."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{option} {spec!r}: expected path.to.module:name")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001
        raise error(
            f"cannot import {module_name!r} for {option} {spec}: {type(e).__name__}: {e}"
        ) from None
    value = getattr(module, attr, None)
    if value is None:
        raise error(f"module {module_name!r} has no {attr!r} ({option} {spec})")
    return value
