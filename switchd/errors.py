"""Exceptions shared across switchd's layers.

Each carries the exit status of the command it ends (switchd/exitcodes.py maps these and
the library errors to one line and a status). Raise the most specific one; the message is
one line that names what failed (file, line, key, URL) and, where it helps, what to do.
"""
from switchd.exitcodes import ExitCode


class SwitchdError(Exception):
    """A failure worth one line to the operator, not a traceback."""
    exit_code = ExitCode.FAILURE


class CliError(SwitchdError):
    """The command ran and failed (a refused call, a failed step)."""


class UsageError(SwitchdError):
    """The command line is wrong: a flag's value, a missing argument."""
    exit_code = ExitCode.USAGE


class InputError(SwitchdError):
    """Input data is refused (a provision file, a CSV, a request body): name file and line."""
    exit_code = ExitCode.INPUT


class UnavailableError(SwitchdError):
    """Something switchd depends on cannot be reached: PostgreSQL, the daemon, FreeSWITCH."""
    exit_code = ExitCode.UNAVAILABLE
