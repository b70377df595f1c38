"""The one base of every error that is the user's to fix (a file, an option,
a host): the CLI prints it as a message and exits 1, never as a traceback.
Kept tiny so the CLI can catch it without importing the engine."""

from __future__ import annotations


class UserError(Exception):
    """A problem with input, configuration or the environment, said plainly."""
