"""Exceptions for mistakes a user can fix (bad argument, bad file).

The CLI turns any :class:`UserError` into one line and exit code 2; every other
exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input that the user can correct; the message says what to do."""


class WeightsError(UserError):
    """Weights cannot be found, downloaded or do not fit the architecture."""
