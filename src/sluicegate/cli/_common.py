"""Helpers shared by the CLI commands: loading the app, reporting errors."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sluicegate.app import App, load_app
from sluicegate.errors import SluicegateError

F = TypeVar("F", bound=Callable[..., Any])


def import_app(spec: str) -> App:
    """Import ``module:attribute`` from the current directory and return the App."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = load_app(spec)
    except ModuleNotFoundError as exc:
        raise click.ClickException(f"cannot import app {spec!r}: {exc}") from None
    except SluicegateError as exc:
        raise click.ClickException(str(exc)) from None
    if not isinstance(app, App):
        raise click.ClickException(f"{spec!r} is a {type(app).__name__}, not a sluicegate.App")
    return app


def user_errors(function: F) -> F:
    """Turn sluicegate errors into one line on stderr and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SluicegateError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]
