"""The pyx error tree.

Every error pyx raises on purpose derives from :class:`PyxError`, says what was
wrong and what to do, and pickles (so it survives process pools)::

    PyxError
    ├── UsageProblem          a user mistake in a command, magic or name (CLI exit 2, UsageError in IPython)
    │   ├── InputError        the task input JSON is invalid (names the key and the problem)
    │   └── UnsafeOperation   a write/unsafe operation without --allow-write
    ├── ConnectionProblem     a data system could not be reached or refused the login
    ├── WrongEnvironment      a system confirmed under one label was reached under another
    ├── EvidenceError         a manifest or artifact is unreadable, invalid or does not verify
    └── ServiceError          a local test/demo server failed to start
"""

from __future__ import annotations


class PyxError(Exception):
    """Base of every error pyx raises on purpose. ``exit_code`` is the CLI exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self):  # keep keyword-only ``hint`` across pickling
        return (_rebuild, (type(self), self.message, self.hint))

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def _rebuild(cls: type[PyxError], message: str, hint: str | None) -> PyxError:
    err = cls.__new__(cls)
    PyxError.__init__(err, message, hint=hint)
    return err


class UsageProblem(PyxError, ValueError):
    """The user asked for something malformed: a bad name, option or value."""

    exit_code = 2


class InputError(UsageProblem):
    """The task's input JSON is invalid; the message names the key and the problem."""


class UnsafeOperation(UsageProblem):
    """A write or otherwise unsafe operation was attempted without ``--allow-write``."""


class ConnectionProblem(PyxError, ConnectionError):
    """A data system could not be reached (tunnel down?) or refused the credentials."""


class WrongEnvironment(PyxError):
    """A system confirmed under one environment label was reached under another."""


class EvidenceError(PyxError):
    """A manifest or artifact is unreadable, invalid or does not verify."""


class ServiceError(PyxError, RuntimeError):
    """A local PostgreSQL/Redis/Kafka server for tests or the demo failed to start or stop."""
