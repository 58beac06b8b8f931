"""The one exception type for bad user input.

The CLI turns an ``InputError`` into a single line on stderr and exit code 2, so its message must
name the file, the field, what was expected and what was found. Messages quote user text (paths,
dataset names, keys) that may hold line breaks or terminal controls; ``one_line`` escapes them,
in ``fail`` and again where the CLI prints, so no input can split or forge the ``error:`` line.
"""

import unicodedata

# Bidirectional overrides and isolates (category Cf) reorder what a terminal shows: escaped too.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class InputError(ValueError):
  """Bad user input: the message is the whole, one-line explanation."""


def _escape(c: str) -> str:
  if c in "\n\r\t":
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c]
  o = ord(c)
  return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def one_line(text: str) -> str:
  """``text`` with every control, line or paragraph separator, surrogate and bidi control
  written as a Python escape (``\\n``, ``\\x1b``, ``\\u2028``): one printable line.

  Args:
    text: any message.

  Returns:
    The message, unchanged where it holds none of those characters.
  """
  text = str(text)
  if text.isprintable() and not _BIDI.intersection(text):
    return text  # the common case, without a per-character pass
  return "".join(
      _escape(c) if c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") else c
      for c in text)


def short_reason(e: BaseException) -> str:
  """An exception in a few words: its type and the first line of its message (at most 200
  characters), for the found part of an error line or a debug record.

  Some tensorstore errors' ``str`` is not their message (a bound method's repr): their first
  argument is used then.
  """
  text = str(e)
  if "<bound method" in text or not text.strip():
    args = [a for a in getattr(e, "args", ()) if isinstance(a, str) and a.strip()]
    text = args[0] if args else ""
  first = text.strip().splitlines()[0][:200] if text.strip() else ""
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


def fail(source: str, field: str, expected: str, found: str) -> "InputError":
  """Builds the standard one-line message: ``<source>: <field>: expected <...>, found <...>``."""
  return InputError(one_line(f"{source}: {field}: expected {expected}, found {found}"))
