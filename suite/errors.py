"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class DepthbenchError(Exception):
    """A user-facing error: the message names the offending input and how to fix it."""
