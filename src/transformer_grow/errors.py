"""Errors that the CLI turns into one clear line and exit code 2.

Every check of user input raises :class:`ConfigError` *before* any work starts, with a message that
names the bad value and what is allowed.
"""


class ConfigError(ValueError):
    """A user-supplied setting is invalid. The message names the value and what is allowed."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def choice(name: str, value, allowed) -> None:
    """Refuse ``value`` for setting ``name`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
