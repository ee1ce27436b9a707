"""Errors a user can act on."""


class HatacError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""
