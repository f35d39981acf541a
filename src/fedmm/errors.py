"""User-facing errors.

Anything a user can cause (a bad path, a bad option, broken data) raises `FedmmError` with one line that names the
fix. The CLI prints it as `error: ...` and exits 2, with no traceback; every other exception is a bug and keeps its
traceback.
"""


class FedmmError(Exception):
    """An error the user can fix; its message is one line that says how."""
