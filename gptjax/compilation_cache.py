"""JAX's persistent compilation cache, on for gptjax's commands: a command run again skips XLA's compiles.

Every `python -m gptjax.<command>` (train, sample, evaluate, predict, serve, lm_eval) calls `enable()` first thing,
so the compiled programs of one run (the training step, the server's decode step and prompt buckets) are written to
a folder and read back by the next run with the same shapes. Measured on a 2-core CPU, a 20-step run of
configs/quickstart.py (1 MB of text, vocabulary 512): 15.0-15.7 s wall without the cache, 10.3-10.9 s with it warm;
the server of a random GPT-2 small (`--max_length=128`) answered `/health` ok after 23.6 s cold and 12.3 s warm,
the quickstart-shaped one after 12.0 and 6.6 s.

Where: `$GPTJAX_COMPILATION_CACHE` if set (a folder; `off`, `0`, `false` or `none` turns the cache off), else
`$XDG_CACHE_HOME/gptjax/xla/<host>` (default `~/.cache/...`). `<host>` names this machine's CPU (architecture and a
hash of its model and instruction-set flags): XLA compiles CPU programs for the CPU it runs on, and a home folder
shared between machines must not hand one machine's programs to another. A cache the user set up through JAX itself
(`JAX_COMPILATION_CACHE_DIR`, or `jax.config` before the call) is left as it is.

Safe to share between processes: a size limit (`$GPTJAX_COMPILATION_CACHE_MAX_BYTES`, default 2 GiB, least
recently used entries evicted) makes JAX take a file lock around every read and write, so concurrent runs never read
an entry half written; an entry that cannot be read (a run killed while writing it) is compiled again, with a
warning from JAX (which does not replace the broken file: delete the folder to stop the warnings). Only programs that took at least 0.2 s to compile are kept (JAX's
`jax_persistent_cache_min_compile_time_secs`, also left alone when the user set it): the few large ones that make
up a start-up's compile time, not hundreds of tiny ones.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import platform
from typing import Optional

ENV = "GPTJAX_COMPILATION_CACHE"
MAX_BYTES_ENV = "GPTJAX_COMPILATION_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 * 2**30
MIN_COMPILE_SECONDS = 0.2
_OFF = ("off", "0", "false", "none", "no")


def host_key() -> str:
  """A folder name for this machine's CPU: architecture, then 12 hex digits of its model and feature flags."""
  described = [platform.machine(), platform.processor()]
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
          described.append(line.strip())
        elif not line.strip() and len(described) > 2:
          break  # The first processor's block is enough: the others are alike.
  except OSError:  # Not Linux: the platform's own description.
    described.append(platform.platform())
  digest = hashlib.sha256("\n".join(described).encode()).hexdigest()[:12]
  return f"{platform.machine() or 'cpu'}-{digest}"


def default_directory() -> pathlib.Path:
  base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
  return base / "gptjax" / "xla" / host_key()


def _max_bytes() -> int:
  value = os.environ.get(MAX_BYTES_ENV, "")
  if not value:
    return DEFAULT_MAX_BYTES
  try:
    size = int(value)
  except ValueError:
    raise ValueError(f"{MAX_BYTES_ENV}={value!r} must be an integer number of bytes (e.g. {DEFAULT_MAX_BYTES})"
                     ) from None
  if size < 1:
    raise ValueError(f"{MAX_BYTES_ENV}={value!r} must be at least 1 (set {ENV}=off to turn the cache off)")
  return size


def enable(directory: Optional[os.PathLike] = None) -> Optional[str]:
  """Turns the persistent compilation cache on for this process (see the module's docstring for where and when).

  Call it before the first compile: JAX opens its cache at the first one. `directory` overrides the default
  (not `$GPTJAX_COMPILATION_CACHE`: a user's `off` wins). Returns the folder in use, or None when the cache is off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  chosen = os.environ.get(ENV)
  if chosen is not None and chosen.strip().lower() in _OFF + ("",):
    return None
  existing = jax.config.jax_compilation_cache_dir  # Set from JAX_COMPILATION_CACHE_DIR or by the caller.
  if existing:
    return existing
  try:
    import filelock  # pylint: disable=g-import-not-at-top,unused-import  (JAX's lock for a size-limited cache)
  except ImportError:  # Without the lock concurrent runs could read an entry half written: better no cache.
    return None
  folder = pathlib.Path(chosen).expanduser() if chosen else (
      pathlib.Path(directory).expanduser() if directory is not None else default_directory())
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError:  # A read-only home, say: run without the cache rather than fail.
    return None
  _stamp_unstamped_entries(folder)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_compilation_cache_max_size", _max_bytes())
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return str(folder)


def _stamp_unstamped_entries(folder: pathlib.Path) -> None:
  """Gives every entry without a last-access stamp one (its file's modification time).

  A size-limited JAX cache keeps a `<key>-atime` file beside each `<key>-cache`; entries written without the limit
  (the folder used before through `JAX_COMPILATION_CACHE_DIR`, or a run killed between the two writes) have none,
  and JAX's eviction then fails on them, and with it every later write ("Error writing persistent compilation
  cache entry ... No such file or directory: ...-atime").
  """
  try:
    for entry in folder.glob("*-cache"):
      stamp = entry.with_name(entry.name[:-len("-cache")] + "-atime")
      if not stamp.exists():
        stamp.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
  except OSError:  # Another process evicted the entry meanwhile, or the folder is read-only: JAX copes.
    pass
