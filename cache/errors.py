"""The one error type a user sees: a one-line message, then a non-zero exit."""


class MidprobeError(Exception):
    """Bad input or state a user can fix: what was wrong and what was expected.

    Command-line entry points print ``error: <message>`` and exit with status 2.
    """
