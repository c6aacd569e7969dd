"""Serves a model over HTTP with OpenAI's API: `python -m gptjax.serve --model <workdir | HF folder | hub name>`.

  python -m gptjax.serve --model gpt2 --port 8000 --num_slots 8

Then any OpenAI client talks to it (`openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")`); the
routes and the chat template are in gptjax/serve/app.py and the README. The server listens on 127.0.0.1 unless
`--host` says otherwise: it has no authentication. It logs one line per request. `--port 0` picks a free port;
`--port_file` receives the port once the socket listens (how `gptjax.deploy` finds it).
"""

import logging
import os
import pathlib
import socket
import sys

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string("model", None, "A gptjax workdir, a Hugging Face folder, or a hub name (gpt2).",
                             required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (loopback by default: no auth).")
_PORT = flags.DEFINE_integer("port", 8000, "Port; 0 picks a free one (see --port_file).")
_NUM_SLOTS = flags.DEFINE_integer("num_slots", 8, "Requests decoded together in one batch.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens per slot, prompt + completion (default: the context).")
_MAX_QUEUE = flags.DEFINE_integer("max_queue", 256, "Requests that may wait for a slot; more get a 429.")
_QUANTIZE = flags.DEFINE_enum("quantize", None, ["int8", "int4"], "Weight-only quantization of the served model.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 1, "Decode steps per engine call: more is faster where the "
                                       "host round trip matters, but a disconnect then takes up to that many steps.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "The id clients name in `model` (default: from --model).")
_PORT_FILE = flags.DEFINE_string("port_file", None, "Write the listening port to this file.")


def default_model_name(model: str) -> str:
  """The served id: a hub name as given (`gpt2`), a folder's own name (`/runs/tiny` -> `tiny`, `gs://b/runs/tiny/`
  -> `tiny`)."""
  from gptjax import paths  # pylint: disable=g-import-not-at-top
  if paths.is_uri(model):
    return paths.path(model).name
  path = pathlib.Path(model).expanduser()
  return path.resolve().name if path.exists() else model


def _fail(message: str):
  print(f"gptjax.serve: error: {message}", file=sys.stderr)
  sys.exit(2)


def _listen(host: str, port: int) -> socket.socket:
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    _fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
  sock.listen(2048)
  sock.set_inheritable(True)
  return sock


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _NUM_SLOTS.value < 1:
    _fail(f"--num_slots={_NUM_SLOTS.value}: must be at least 1")
  if _MAX_QUEUE.value < 0:
    _fail(f"--max_queue={_MAX_QUEUE.value}: must be >= 0")
  if _MAX_LENGTH.value is not None and _MAX_LENGTH.value < 2:
    _fail(f"--max_length={_MAX_LENGTH.value}: must be at least 2")
  if _STEPS_PER_CALL.value < 1:
    _fail(f"--steps_per_call={_STEPS_PER_CALL.value}: must be at least 1")
  if not 0 <= _PORT.value < 65536:
    _fail(f"--port={_PORT.value}: must be in [0, 65535]")
  log = logging.getLogger("gptjax.serve")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s gptjax.serve: %(message)s"))
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False
  # Imported after flag parsing so that --help is instant.
  import uvicorn  # pylint: disable=g-import-not-at-top
  import gptjax  # pylint: disable=g-import-not-at-top
  from gptjax import compilation_cache  # pylint: disable=g-import-not-at-top
  from gptjax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  try:
    lm = gptjax.load(_MODEL.value)
    if _QUANTIZE.value and lm.quantization is None:
      lm = lm.quantize(_QUANTIZE.value)
  except (ValueError, TypeError, OSError) as e:  # The message names the path; a traceback would bury it.
    _fail(f"--model={_MODEL.value}: {e}")
  if lm.tokenizer is None:
    _fail(f"--model={_MODEL.value}: the model has no tokenizer files; the server reads and writes text")
  sock = _listen(_HOST.value, _PORT.value)
  host, port = sock.getsockname()[:2]
  name = _MODEL_NAME.value or default_model_name(_MODEL.value)
  if _MAX_LENGTH.value is not None and _MAX_LENGTH.value > lm.config.block_size:
    _fail(f"--max_length={_MAX_LENGTH.value}: exceeds the model's context block_size={lm.config.block_size}")
  options = app_lib.ServerOptions(model_name=name, num_slots=_NUM_SLOTS.value, max_queue=_MAX_QUEUE.value,
                                  max_length=_MAX_LENGTH.value, steps_per_call=_STEPS_PER_CALL.value)
  application = app_lib.create_app(lm, options)
  if _PORT_FILE.value:
    tmp = f"{_PORT_FILE.value}.tmp"
    pathlib.Path(tmp).write_text(str(port))
    os.replace(tmp, _PORT_FILE.value)  # Atomic: a reader never sees a half-written port.
  shown = f"[{host}]" if ":" in host else host
  log.info("serving %s on http://%s:%d/v1 (%d slots); GET /health says ok once warmed up", name, shown, port,
           _NUM_SLOTS.value)
  config = uvicorn.Config(application, log_config=None, access_log=False, log_level="warning",
                          timeout_graceful_shutdown=5)
  uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
  app.run(main)
