"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class EdgepackError(Exception):
    """A user-facing failure: bad input, a corrupt bundle, an impossible request."""
