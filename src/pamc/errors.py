"""User-facing errors: the CLI prints them as one line, never as a traceback."""


class PamcError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""
