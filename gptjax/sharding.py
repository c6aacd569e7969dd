"""The device mesh, the logical-axis rules that map parameter axes onto it, and multi-host start-up.

Three mesh axes, sized by `config.mesh`:
  data    pure data parallelism: the batch is split, parameters are replicated.
  fsdp    the batch is split AND every parameter's 'embed' axis is sharded (ZeRO-3 style; XLA gathers weights
          just before each use).
  tensor  Megatron-style tensor parallelism: attention heads, the MLP hidden axis and the vocabulary are split.

Parameters carry logical axis names (`gptjax/model.py`: 'vocab', 'embed', 'mlp', 'heads', 'kv', 'qkv', 'norm',
'position'); activations are constrained to ('batch', 'length', 'embed'). `LOGICAL_AXIS_RULES` is the one place
where names meet mesh axes. Rules are tried in order and a mesh axis is used at most once per array, so for an
activation 'batch' takes ('data', 'fsdp') first and 'embed' is then left unsharded.

A dimension that a mesh axis does not divide (GPT-2's 50257-row vocabulary over tensor=2, say) is replicated along
that axis instead of failing: `param_shardings` logs which.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over every data-like axis; rows of one microbatch live on `data * fsdp` devices.
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("length", None),
    ("kv", None),
    ("qkv", None),
    ("norm", None),
    ("position", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all devices (of every process).

  Args:
    data, fsdp, tensor: axis sizes. At most one may be -1, meaning "all devices the others leave".
    devices: defaults to `jax.devices()`.

  Returns:
    A `Mesh` whose axes are `AxisType.Auto` (the compiler propagates shardings from the ones we pin).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  for name, size in sizes.items():
    if not isinstance(size, int) or isinstance(size, bool) or size == 0 or size < -1:
      raise ValueError(f"mesh.{name} must be a positive integer or -1 (all remaining devices), got {size!r}")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"Only one mesh axis may be -1, got {free} (sizes {sizes})")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"{len(devices)} devices cannot be split into mesh {sizes}: the fixed axes multiply to "
                       f"{fixed}, which does not divide {len(devices)}")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"Mesh {sizes} has {math.prod(sizes.values())} devices but {len(devices)} are available; "
                     f"set one axis to -1 to use all of them")
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def mesh_from_config(mesh_config) -> Mesh:
  """`make_mesh` from `config.mesh` (fields data, fsdp, tensor)."""
  return make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor)


def axis_rules():
  """Context manager that makes `LOGICAL_AXIS_RULES` current for `nn.with_logical_constraint` in the model."""
  return nn.logical_axis_rules(LOGICAL_AXIS_RULES)


def logical_to_sharding(logical_spec: P, shape: Sequence[int], mesh: Mesh, name: str = "") -> NamedSharding:
  """The `NamedSharding` of one array from its logical `PartitionSpec`, dropping mesh axes that do not divide it."""
  mesh_spec = nn.logical_to_mesh_axes(tuple(logical_spec), LOGICAL_AXIS_RULES)
  axes = []
  for dim, (size, assigned) in enumerate(zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec)))):
    names = () if assigned is None else (assigned,) if isinstance(assigned, str) else tuple(assigned)
    ways = math.prod(mesh.shape[a] for a in names)
    if ways > 1 and size % ways:
      logging.info("Replicating dimension %d (size %d) of %s: mesh axes %s (%d ways) do not divide it.",
                   dim, size, name or "an array", names, ways)
      names = ()
    axes.append(None if not names else names[0] if len(names) == 1 else names)
  return NamedSharding(mesh, P(*axes))


def tree_shardings(abstract_boxed: Any, mesh: Mesh) -> Any:
  """Shardings for the UNBOXED version of a tree whose leaves may be `nn.LogicallyPartitioned`.

  Args:
    abstract_boxed: e.g. `jax.eval_shape(init_state)` where parameters (and the optimizer moments built from
      them) are boxed with logical axis names. Unboxed leaves (step counters) are replicated.
    mesh: the current mesh.

  Returns:
    A tree shaped like `nn.meta.unbox(abstract_boxed)` of `NamedSharding`s.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  shapes = nn.meta.unbox(abstract_boxed)
  paths_and_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  flat_specs = treedef.flatten_up_to(specs)
  shardings = [logical_to_sharding(spec, leaf.shape, mesh, jax.tree_util.keystr(path))
               for (path, leaf), spec in zip(paths_and_shapes, flat_specs)]
  return jax.tree_util.tree_unflatten(treedef, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches [B, ...]: rows split over ('data', 'fsdp'), replicated over 'tensor'."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  """How many ways a batch is split: every (micro)batch size must be a multiple of this."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """Assembles each process's contiguous slice of a batch into one global array sharded over the batch axes.

  Args:
    local_rows: [B / process_count, ...] this process's rows (`TokenDataset.batch(process_index=...)`).
    mesh: the current mesh.

  Returns:
    A [B, ...] `jax.Array` with `batch_sharding(mesh)`.
  """
  global_shape = (local_rows.shape[0] * jax.process_count(),) + local_rows.shape[1:]
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_rows, global_shape)


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, timeout_s: int = 300) -> bool:
  """Joins a multi-process run through `jax.distributed`, or does nothing for a single process.

  Each argument falls back to an environment variable (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID`). With none of them set, this is a single-process run and JAX is left alone. With only a
  coordinator address, JAX's own cluster detection (SLURM, TPU pods, ...) fills in the rest.

  On CPU the cross-process collectives are gloo's (set here), so two processes on one machine work, e.g. a test
  that starts two trainers on 127.0.0.1.

  Returns:
    True when a multi-process run was initialised.

  Raises:
    RuntimeError: the coordinator did not hear from every process in `timeout_s` (the classic hang when a
      multi-host job is started on one host only, jax#22436), naming what was expected.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if address is None and count is None and index is None:
    return False
  if count is not None and index is not None and not 0 <= index < count:
    raise ValueError(f"process_id {index} is outside [0, num_processes={count})")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=count, process_id=index,
                               initialization_timeout=timeout_s)
  except Exception as e:  # JAX raises a bare XlaRuntimeError/DEADLINE_EXCEEDED that names none of this.
    raise RuntimeError(
        f"jax.distributed.initialize(coordinator_address={address!r}, num_processes={count}, "
        f"process_id={index}) failed: {e}. Every one of the {count or '?'} processes must be started, each with "
        f"its own process_id, and all must reach the coordinator within {timeout_s} s.") from e
  logging.info("Process %d of %d; %d local devices, %d in all.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"Environment variable {name}={value!r} must be an integer") from None


def cpu_device_count(requested: int, batch_sizes: Sequence[int], cores: Optional[int] = None) -> int:
  """How many XLA CPU devices to split this machine's cores into for a run whose batches are `batch_sizes`.

  `requested` is `config.mesh.cpu_devices`: a positive count is taken as it is; 0 means the largest count up to
  the number of usable cores that divides every batch (so the default mesh, data = all devices, always fits).
  """
  if requested:
    return requested
  cores = cores or len(os.sched_getaffinity(0))
  return max(d for d in range(1, cores + 1) if all(b % d == 0 for b in batch_sizes))


def split_cpu_cores(count: int) -> Optional[int]:
  """Exposes the host's CPU as `count` XLA devices (`jax_num_cpu_devices`), so data parallelism spans its cores.

  Why: XLA's CPU backend runs one program per device and parallelises inside each op over one thread pool, so a
  small model's step is hundreds of small ops, each split across the cores and joined again. With one device per
  core the batch is split instead: each device runs the whole step on its rows without waiting for the others
  until the gradient all-reduce (exact up to summation order). `experiments/bench_train.py` measures both.

  Only before JAX has initialised its backends, and never over the user's own choice: does nothing (returns None)
  when `XLA_FLAGS` sets `--xla_force_host_platform_device_count`, `JAX_NUM_CPU_DEVICES` is set, `count` is 1, or
  the backends are already up (JAX then refuses the option: it must be set before any JAX operation).
  Accelerators are unaffected: the option only shapes the CPU platform. Returns the count applied.
  """
  if (count <= 1 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or os.environ.get("JAX_NUM_CPU_DEVICES")):
    return None
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # "should be updated before backends are initialized": too late for this process.
    return None
  return count
