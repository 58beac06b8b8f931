"""The one exception type for bad user input.

The CLI turns an ``InputError`` into a single line on stderr and exit code 2, so its message must
name the file, the field, what was expected and what was found.
"""


class InputError(ValueError):
  """Bad user input: the message is the whole, one-line explanation."""


def fail(source: str, field: str, expected: str, found: str) -> "InputError":
  """Builds the standard one-line message: ``<source>: <field>: expected <...>, found <...>``."""
  return InputError(f"{source}: {field}: expected {expected}, found {found}")
