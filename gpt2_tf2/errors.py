"""The one exception type for bad input; the command-line face prints it as a single line."""


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and what to do."""
