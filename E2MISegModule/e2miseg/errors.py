"""Errors the engine raises on purpose.

Every error a user can cause (bad file, bad checkpoint, unwritable output, ...) is an
``E2MISegError``: the CLI prints its message as one line and exits with ``exit_code``;
anything else is a bug and shows a traceback only with ``--debug``.
The exit codes are documented in the README so scripts and the Slicer module can react.
"""
from __future__ import annotations


class E2MISegError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 1


class InputImageError(E2MISegError):
    """The input image cannot be read or is unsuitable for the model."""

    exit_code = 3


class CheckpointError(E2MISegError):
    """The checkpoint file or its model card is missing, broken, unsafe or inconsistent."""

    exit_code = 4


class OutputError(E2MISegError):
    """The output cannot be written where the user asked."""

    exit_code = 5


class ResourceError(E2MISegError):
    """The job would not fit in memory (estimated before allocating)."""

    exit_code = 6


class Cancelled(E2MISegError):
    """The user cancelled the run; nothing was written."""

    exit_code = 130
