"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(ValueError):
  """A bad config value, input or path: the message names field, value and what is allowed."""


def require(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)
