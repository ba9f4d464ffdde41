"""The one error type for bad user input.

The CLI turns an :class:`InputError` into one line on stderr and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a shape, a name or a parameter value.

    The message is one line that names the problem and says what to do.
    """
