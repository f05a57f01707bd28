"""The one exception type for bad user input.

Its message names what is wrong and how to fix it; the command line prints it as a single
`error: ...` line and exits non-zero instead of showing a traceback.
"""


class UserError(Exception):
    """Bad input (a missing dataset, a mistyped parameter, a disagreeing class list, ...)."""
