"""Errors that the command line turns into one clear line and exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a file, flag or value that cannot be used as given.

    The message names the input and what was expected; it is printed as one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
