"""The one error path and console policy of every `python -m gptjax.<cli>` (train, sample, evaluate, predict,
serve): `console.run(main)` in place of `absl.app.run(main)`.

* A user's mistake (a bad flag or config value, a missing file, a workdir in use, a resume that does not match)
  is one line on stderr, `error: <message naming the value>`, and exit status 2; `--traceback` shows the full
  trace instead. Anything else is a bug and keeps its traceback.
* Library chatter stays off the console: INFO lines logged by other packages (orbax writes dozens per checkpoint,
  JAX and TFDS a few) are dropped unless `--library_logs`; their warnings and errors always show.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

_TRACEBACK = flags.DEFINE_bool("traceback", False, "On an error, show the full Python traceback, not one line.")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show the INFO lines of libraries (orbax, JAX, TFDS).")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# What a user can cause and fix: bad values, missing or unreadable files, a busy workdir, a diverged run.
USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError, FloatingPointError, app.UsageError)


class _OursOnly(py_logging.Filter):
  """Passes warnings and errors from anywhere, and INFO lines logged from gptjax (or the running script) only."""

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      # orbax warns at every save without a validation loss that the best-checkpoint policy has none to rank:
      # the checkpointer means it (gptjax/checkpoint.py), so it is chatter, not news.
      return "did not provide metrics" not in record.getMessage()
    path = os.path.abspath(record.pathname)
    return path.startswith(_PACKAGE_DIR) or path == os.path.abspath(sys.argv[0])


def quiet_libraries() -> None:
  """Keeps other packages' INFO lines off the console (absl's handler and Python's root logger)."""
  logging.get_absl_handler().addFilter(_OursOnly())
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(_OursOnly())
  for name in ("jax", "orbax", "absl", "tensorflow_datasets", "etils"):
    py_logging.getLogger(name).addFilter(_OursOnly())


def error_line(e: BaseException) -> str:
  """`error: <message>` on one line (a message's own line breaks become '; ')."""
  message = str(e).strip() or type(e).__name__
  if isinstance(e, KeyError) and e.args:
    message = str(e.args[0])
  return "error: " + "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    # Unknown flag, a config key that does not exist (ml_collections adds "did you mean"), a bad value, a config
    # file that does not load.
    if "--traceback" in argv:
      raise
    if isinstance(e, (AttributeError, KeyError)) and e.args:
      inner = e.args[0]
      while isinstance(inner, (AttributeError, KeyError)) and inner.args:  # ml_collections nests them.
        inner = inner.args[0]
      first, *rest = str(inner).splitlines()
      e = ValueError("\n".join([f"unknown config field {first}", *rest]))
    print(error_line(e), file=sys.stderr, flush=True)
    sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with the error path and console policy above."""
  def wrapped(argv):
    if not _LIBRARY_LOGS.value:
      quiet_libraries()
    if _TRACEBACK.value:
      return main(argv)
    try:
      return main(argv)
    except USER_ERRORS as e:
      logging.flush()
      print(error_line(e), file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(wrapped, flags_parser=_parse_flags)
