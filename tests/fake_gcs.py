"""A Google Cloud Storage stand-in for tests: `gcp-storage-emulator` serving an in-memory bucket on a local port.

gptjax reaches `gs://` through two clients, and both are pointed at the emulator, so a test exercises the very
code a real bucket would:
- `etils.epath` (workdir files, tokenizer, token cache, logs) through fsspec's `gcsfs`, which honours
  `STORAGE_EMULATOR_HOST`;
- orbax's array data through tensorstore's own `gs://` driver, which honours `TENSORSTORE_GCS_HTTP_URL` (and takes
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` as its credentials).
Tensorstore reads its URL once per process, so there is one emulator per process (`start` is idempotent).

The emulator leaves out what tensorstore relies on for safe concurrent writes: object generations in download
headers (`x-goog-generation`) and the generation preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`: 412,
or 304 for a read whose copy is current). `_add_generations` adds them as GCS documents them, in front of the
emulator's own handlers.
"""

import functools
import http
import json
import logging
import os
import socket
import urllib.parse
import urllib.request

BUCKET = "gptjax-test-bucket"
_SERVER = {}


def start() -> str:
  """Starts the emulator (once per process) with the bucket `BUCKET`; returns its URL."""
  if "url" in _SERVER:
    return _SERVER["url"]
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  _add_generations(emulator)
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # A 404 is an answer, not an error.
  create_server = emulator.create_server
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server._api.daemon = True  # pylint: disable=protected-access  (its thread must not keep pytest from exiting)
  server.start()
  # Clients that drop a connection early (tensorstore does) make socketserver print a BrokenPipe trace each time.
  server._api._httpd.handle_error = lambda request, address: None  # pylint: disable=protected-access
  url = f"http://127.0.0.1:{port}"
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
                    # gcsfs would otherwise ask Google's control plane (unreachable here) for the bucket's layout.
                    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
  _SERVER.update(url=url, server=server)
  return url


def object_names(prefix: str = "") -> list[str]:
  """The names of the objects in `BUCKET` under `prefix`, asked of the emulator's JSON API directly (not through
  gcsfs or tensorstore): what a real bucket would list."""
  names, token = [], None
  while True:
    query = {"prefix": prefix, **({"pageToken": token} if token else {})}
    url = f"{_SERVER['url']}/storage/v1/b/{BUCKET}/o?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
      page = json.loads(response.read())
    names += [item["name"] for item in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
      return sorted(names)


def _add_generations(emulator) -> None:
  """Wraps the emulator's object handlers (its route table is a tuple of (regex, {method: handler})) with GCS's
  generation preconditions and the `x-goog-generation` header of downloads."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top

  def current(request, storage):
    name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
    try:
      return storage.get_file_obj(request.params["bucket_name"], name)["generation"]
    except (NotFound, KeyError, TypeError):
      return None

  def wrap(handler, read):
    @functools.wraps(handler)
    def checked(request, response, storage, *args, **kwargs):
      generation = current(request, storage)
      match, not_match = (request.query.get(k, [None])[0] for k in ("ifGenerationMatch", "ifGenerationNotMatch"))
      if match is not None and (generation or "0") != match:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        return None
      if not_match is not None and (generation or "0") == not_match:
        response.status = http.HTTPStatus.NOT_MODIFIED if read else http.HTTPStatus.PRECONDITION_FAILED
        return None
      if read and generation is not None:
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = "1"
      return handler(request, response, storage, *args, **kwargs)
    checked.wrapped_for_generations = True
    return checked

  for _, handlers in emulator.HANDLERS:
    for method, handler in list(handlers.items()):
      if getattr(handler, "wrapped_for_generations", False):
        continue
      if handler in (objects.get, objects.download):
        handlers[method] = wrap(handler, read=True)
      elif handler in (objects.insert, objects.delete):
        handlers[method] = wrap(handler, read=False)
