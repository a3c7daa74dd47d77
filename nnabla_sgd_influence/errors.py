"""The one exception type that reaches users as a single clear line."""


class InfluenceError(Exception):
    """A problem with the user's input (file, row, column or layer) that stops the run.

    The plugins print ``str(error)`` on one line and exit non-zero; no traceback.
    """
