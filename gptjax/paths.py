"""Where a run's files live: a local folder or a cloud URI (`gs://`, `s3://`, ...), one path type for both.

`pathlib.Path("gs://bucket/run")` is the local folder `gs:/bucket/run`: a run given that `--workdir` would write
beside the current folder and never reach the bucket. `etils.epath.Path` keeps the URI and reaches the store
through its backend (fsspec's `gcsfs` / `s3fs`, or TensorFlow's gfile when TensorFlow is installed), and it is the
path layer orbax itself writes checkpoints through. So every path of a run (the workdir, its checkpoints,
tokenizer, logs, TensorBoard events, and the token cache) is made by `path()`.

An object store is not a disk, and the callers differ in three places:
- No folder rename (a rename copies, then deletes) and no exclusive create: where a local run renames a finished
  folder into place, a cloud run writes the folder's marker file last (`upload_dir(..., last=...)`), and readers
  trust a folder only once its marker is there.
- No append: a growing file (`metrics.jsonl`, event files) is rewritten whole; one object write is atomic, so a
  reader sees the old object or the new one.
- No memory map and no local-file APIs (`np.memmap`, `tokenizers.Tokenizer.from_file`, safetensors): those read a
  local copy (`download_dir`, `local_copy`) or write a local folder that is then uploaded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Optional, Union

from etils import epath

PathLike = Union[str, os.PathLike]
# The URI schemes etils.epath reaches from its floor in setup.py on; anything else with '://' is refused by name.
SCHEMES = ("gs", "s3", "az")


def is_uri(p: PathLike) -> bool:
  """True for `<scheme>://...` (a cloud path); False for local paths, relative or absolute."""
  return "://" in os.fspath(p)


def is_local(p: PathLike) -> bool:
  return not is_uri(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an `epath.Path`: a cloud URI kept as it is, a local path with `~` expanded and made absolute.

  Absolute because orbax requires absolute checkpoint paths, and so that a run's messages name the folder
  wherever they are read.

  Raises:
    ValueError: a URI whose scheme epath has no backend for (the message lists the ones it has).
  """
  if isinstance(p, epath.Path) and not is_local(p):
    return p
  text = os.fspath(p)
  if is_uri(text):
    scheme = text.split("://", 1)[0]
    if scheme not in SCHEMES:
      raise ValueError(f"Unsupported path {text!r}: expected a local path or a URI with one of the schemes "
                       f"{', '.join(s + '://' for s in SCHEMES)}")
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def write_atomic(p: PathLike, data: Union[str, bytes]) -> None:
  """Writes `data` (text as UTF-8) so that a reader, or a kill, sees the old content or the new, never a part.

  Locally: a temporary file beside the target, fsync, then a rename over it. In an object store a single write
  already is atomic (the object appears whole when the upload finishes).
  """
  target = path(p)
  data = data.encode("utf-8") if isinstance(data, str) else data
  if is_uri(target):
    target.write_bytes(data)
    return
  tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)


def files_under(directory: PathLike) -> list[str]:
  """Relative paths ('a/b.txt') of the files under `directory`, sorted; empty when it does not exist."""
  root = path(directory)
  found = []

  def visit(folder: epath.Path, prefix: str) -> None:
    for entry in folder.iterdir():
      if entry.is_dir():
        visit(entry, f"{prefix}{entry.name}/")
      else:
        found.append(prefix + entry.name)

  if root.is_dir():
    visit(root, "")
  return sorted(found)


def size(p: PathLike) -> int:
  """A file's size in bytes (local or cloud)."""
  return path(p).stat().length


def upload_dir(local: PathLike, remote: PathLike, *, last: Optional[str] = None,
               names: Optional[list[str]] = None) -> None:
  """Copies the files of the local folder `local` (or the given relative `names`) into `remote` (any path), `last`
  (a relative name) last.

  `last` is the folder's completeness marker: a reader that finds it may trust everything else is there.
  """
  source, target = path(local), path(remote)
  names = files_under(source) if names is None else list(names)
  if last is not None:
    if last not in names:
      raise FileNotFoundError(f"{source / last} is missing: it is the marker that {target} is complete")
    names = [n for n in names if n != last] + [last]
  target.mkdir(parents=True, exist_ok=True)
  for name in names:
    destination = target / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes((source / name).read_bytes())


def download_dir(remote: PathLike, local: PathLike, *, names: Optional[list[str]] = None) -> epath.Path:
  """Copies the files under `remote` (or the given relative `names`) into the local folder `local`."""
  source, target = path(remote), path(local)
  for name in names if names is not None else files_under(source):
    destination = target / name
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes((source / name).read_bytes())
    os.replace(tmp, destination)  # A killed copy leaves a temp file, never a short file under the real name.
  return target


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[epath.Path]:
  """A local path holding what `p` holds: `p` itself when local, else a temporary copy (a file or a folder)."""
  source = path(p)
  if is_local(source):
    yield source
    return
  with tempfile.TemporaryDirectory(prefix="gptjax-") as tmp:
    copy = epath.Path(tmp) / source.name
    if source.is_dir():
      download_dir(source, copy)
    else:
      copy.write_bytes(source.read_bytes())
    yield copy


@contextlib.contextmanager
def local_folder_for(p: PathLike) -> Iterator[epath.Path]:
  """A local folder to write into whose files end up in `p`: `p` itself when local, else a temporary folder
  uploaded to `p` when the block ends without an error."""
  target = path(p)
  if is_local(target):
    target.mkdir(parents=True, exist_ok=True)
    yield target
    return
  with tempfile.TemporaryDirectory(prefix="gptjax-") as tmp:
    yield epath.Path(tmp)
    upload_dir(tmp, target)
