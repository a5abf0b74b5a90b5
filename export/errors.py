"""The one error type the exporter raises for a caller's mistake."""


class ExportError(ValueError):
    """A bad argument, shape or weight file: the message is meant for the user, not a traceback."""
