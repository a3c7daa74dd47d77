"""The one exception type that reaches users as a single clear line, and how to quote in it."""

EXCERPT_LIMIT = 120  # characters of user data quoted in a message


class InfluenceError(Exception):
    """A problem with the user's input (file, row, column or layer) that stops the run.

    The plugins print ``str(error)`` on one line and exit non-zero; no traceback.
    """


def excerpt(value: object, limit: int = EXCERPT_LIMIT) -> str:
    """``value`` as one line of at most ``limit`` characters (longer text is cut with "...")."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
