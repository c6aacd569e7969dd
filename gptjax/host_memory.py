"""The host allocator under XLA:CPU: glibc told to keep its memory, so that training steps stop faulting in pages.

Why: XLA:CPU allocates each execution's temporary buffer with `posix_memalign` from the worker thread that runs
it (87 MB per device for the quickstart's training step). glibc serves a worker thread from a secondary arena,
whose heaps are at most 64 MB, so a larger block is `mmap`-ed afresh and unmapped when the step ends, and the next
step writes to new zero pages again: 42,600 minor page faults (175 MB) per quickstart training step, counted with
`getrusage`; its gradient took 129 ms with them and 102 ms without (2-core CPU, two XLA devices, best of 5).

Two settings, both through `mallopt(3)`:
- `configure()`, at `import gptjax`: no block mapped on its own (M_MMAP_MAX = 0) and no freed memory returned to
  the system (M_TRIM_THRESHOLD at its largest), so blocks up to a heap's size are reused from step to step. It
  did not slow any case measured (decoding, nanoGPT's training shape).
- `one_arena()`, on top, when a training step's buffers outgrow a secondary heap (`training_buffer_bytes`; the
  trainer decides before JAX starts): every thread allocates from the main arena, which grows to the peak once.
  Not the default, because the devices' threads then contend for that arena's lock (see its docstring).

The price is the one every caching allocator pays: the process keeps its peak heap until it exits. Only on glibc
(Linux) and only where no accelerator plugin for JAX is installed (CUDA, ROCm and TPU processes compute off the
host and keep glibc's defaults); `GPTJAX_HOST_ALLOCATOR=system` opts out. The settings apply to arenas and blocks
made afterwards, so they matter before JAX starts its CPU client (importing jax alone does not start it).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from typing import Optional

OPT_OUT_ENV = "GPTJAX_HOST_ALLOCATOR"  # "system": leave glibc's defaults.
# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_LARGEST_INT = 2**31 - 1

_applied: Optional[bool] = None
_one_arena = False


def _accelerator_plugin_installed() -> bool:
  """Whether JAX may run on something other than the CPU here: libtpu, or a PJRT plugin (CUDA, ROCm: they install
  into the `jax_plugins` namespace package). Module lookups only: no import, no scan of installed metadata."""
  return any(importlib.util.find_spec(name) is not None for name in ("libtpu", "jax_plugins"))


def _libc():
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # Only glibc has these mallopt parameters (musl and macOS do not).
    return libc
  except (OSError, AttributeError):
    return None


def _wanted() -> bool:
  return os.environ.get(OPT_OUT_ENV, "").lower() != "system" and not _accelerator_plugin_installed()


def configure() -> bool:
  """Keeps freed memory and maps no block of its own (M_MMAP_MAX = 0, M_TRIM_THRESHOLD at its largest), once per
  process; whether the settings are in force. Run at `import gptjax`."""
  global _applied
  if _applied is None:
    libc = _libc() if _wanted() else None
    _applied = bool(libc) and all(libc.mallopt(option, value) == 1
                                  for option, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _LARGEST_INT)))
  return _applied


def one_arena() -> bool:
  """Makes every thread allocate from glibc's main arena (M_ARENA_MAX = 1), on top of `configure`.

  For programs whose buffers outgrow a secondary arena's 64 MB heap (a training step's activations); the trainer
  calls it before JAX starts when its estimate says so. Not the default: one arena makes the devices' threads
  contend for its lock, which costs steps of small buffers more than the page faults it saves (nanoGPT's CPU
  shape: 28 -> 33 ms per gradient; one-slot decoding of a 1M-parameter model: 0.25 -> 0.29 ms per token).
  Whether it is in force.
  """
  global _one_arena
  if not _one_arena and configure():
    _one_arena = _libc().mallopt(_M_ARENA_MAX, 1) == 1
  return _one_arena


SECONDARY_HEAP_BYTES = 64 * 2**20  # glibc's HEAP_MAX_SIZE on 64-bit: a secondary arena maps larger blocks alone.


def training_buffer_bytes(model, rows_per_device: int) -> int:
  """A rough size of one device's buffers in a float32 GPT training step of `model` (a `ModelConfig` or the
  config file's `config.model`; `mlp_dim` 0 or absent means 4 widths): per token, the logits three times
  (logits, softmax, gradient) and per layer 8 widths, 2 MLP widths and 4 attention rows of `block_size`.
  The quickstart's step (8 rows of 128 per device): 92 MB against the 87 MB XLA allocates; nanoGPT's CPU shape: 19 MB.
  """
  mlp_dim = getattr(model, "mlp_dim", 0) or 4 * model.emb_dim
  floats = 3 * model.vocab_size + model.num_layers * (8 * model.emb_dim + 2 * mlp_dim
                                                      + 4 * model.num_heads * model.block_size)
  return 4 * rows_per_device * model.block_size * floats


def one_arena_for_training(model, rows_per_device: int) -> bool:
  """`one_arena` when a training step of `model` with `rows_per_device` rows outgrows a secondary heap; whether
  one arena is in force. Call it before JAX starts, as the trainer does (`gptjax.train.loop.split_cpu_cores`)."""
  if training_buffer_bytes(model, rows_per_device) > SECONDARY_HEAP_BYTES:
    return one_arena()
  return _one_arena


def one_arena_applied() -> bool:
  """Whether `one_arena` is in force in this process."""
  return _one_arena
