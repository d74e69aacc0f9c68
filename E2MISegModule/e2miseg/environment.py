"""Environment variables the engine reads, each checked once with a one-line message that names it.

``e2miseg`` checks them all at start-up (``check_environment``), before any file or model is read, so a
typo in a job script fails in milliseconds and says which variable to fix; the readers below use the
same checks when the API is called without the CLI.
"""
from __future__ import annotations

import math
import os
import pwd
from pathlib import Path

from .settings import PRECISIONS, RUNTIMES, SettingsError

MEMORY_LIMIT_MAX_MB = 1 << 30  # a petabyte: above it a value is a typo, not a machine


def _fix(name: str) -> str:
    return f"fix or unset {name}"


def memory_limit_mb() -> float | None:
    """``$E2MISEG_MEMORY_LIMIT_MB`` as a positive, finite number of megabytes; None when unset or empty."""
    text = os.environ.get("E2MISEG_MEMORY_LIMIT_MB", "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"E2MISEG_MEMORY_LIMIT_MB={text!r} is not a number of megabytes; give a number in "
                            f"0..{MEMORY_LIMIT_MAX_MB} (0 excluded) or unset it") from None
    if not (math.isfinite(value) and 0 < value <= MEMORY_LIMIT_MAX_MB):
        raise SettingsError(f"E2MISEG_MEMORY_LIMIT_MB={text!r} is outside 0..{MEMORY_LIMIT_MAX_MB} MB (0 excluded); "
                            f"{_fix('E2MISEG_MEMORY_LIMIT_MB')}")
    return value


def choice(name: str, choices: tuple[str, ...]) -> str | None:
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return None
    if text not in choices:
        raise SettingsError(f"{name}={os.environ[name]!r} is not one of {', '.join(choices)}; {_fix(name)}")
    return text


def home() -> Path:
    """The user's home: ``$HOME`` when it is set and not empty, else the account's home from the password
    database (an empty HOME, as some job schedulers leave it, made the store ``/.e2miseg``)."""
    text = os.environ.get("HOME", "")
    if text.strip():
        return Path(text)
    try:
        account = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        account = ""
    if not account:
        raise SettingsError("HOME is empty and this account has no home folder; set HOME, or E2MISEG_MODELS and E2MISEG_CACHE")
    return Path(account)


def folder_variable(name: str) -> Path | None:
    """A folder named by ``name``; None when unset (an empty value is a mistake, not "unset")."""
    text = os.environ.get(name)
    if text is None:
        return None
    if not text.strip():
        raise SettingsError(f"{name} is set but empty; give a folder or unset it")
    return Path(text)


def check_environment() -> None:
    """Every variable the engine reads, checked up front (values are read again where they are used)."""
    memory_limit_mb()
    choice("E2MISEG_RUNTIME", RUNTIMES)
    choice("E2MISEG_PRECISION", PRECISIONS)
    for name in ("E2MISEG_MODELS", "E2MISEG_CACHE"):
        folder_variable(name)
    if os.environ.get("E2MISEG_MODELS") is None or os.environ.get("E2MISEG_CACHE") is None:
        home()
    for name in ("RANK", "WORLD_SIZE"):
        text = os.environ.get(name)
        if text is not None and not text.strip().isdigit():
            raise SettingsError(f"{name}={text!r} is not a whole number; start shards with torchrun or set 0 <= RANK < WORLD_SIZE")
