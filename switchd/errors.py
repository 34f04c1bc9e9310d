"""Exceptions shared across switchd's layers."""


class CliError(Exception):
    """A failure worth one line to the operator, not a traceback."""
