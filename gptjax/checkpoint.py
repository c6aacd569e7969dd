"""Checkpoints: an orbax `CheckpointManager` with three items per step, auto-resume, restore onto any mesh.

A step directory `<workdir>/checkpoints/<step>/` holds
  params     the parameters (orbax `StandardSave`): all `gptjax.load(workdir)` needs,
  opt_state  the optimizer state, restored only to resume training,
  meta       JSON: the step, the data position (batches are a function of (seed, step), so the step is the data
             position), the tokenizer and model config, the validation loss.

Keeping params apart from the optimizer state lets inference restore the weights alone (EasyLM#72).

Which steps stay on disk: the newest `max_to_keep`, plus (with `keep_best`) the one with the lowest validation
loss. Saves are asynchronous; `wait` blocks until they are on disk and `close` does so before returning, so the
last save of a run is never lost.

Restores read into an abstract target whose shardings come from the CURRENT mesh, never the saved ones, so a
checkpoint written on 8 devices restores on 1 and the other way round (orbax#648).

A step directory without orbax's `commit_success.txt` (written just before the atomic rename that finishes a
save), or without one of the three items, was left by a killed or partial copy: it is moved aside to
`<step>.incomplete-<n>` with a warning naming what is missing and the newest complete step, and never restored.
Temporary `<step>.orbax-checkpoint-tmp-*` directories of a save killed midway are reported and removed by orbax.

`initial_weights` resolves `config.init_from` (scratch, a run folder, a Hugging Face folder or hub name), and
`load_workdir` reads a run folder's parameters for `gptjax.load`.

Every directory here may be a cloud URI (`gs://bucket/run/checkpoints`): paths are `etils.epath` paths
(`gptjax.paths`), which orbax reads and writes through itself (its array data through tensorstore's own `gs://`
driver). In an object store orbax writes a step in place and `commit_success.txt` last, so the same rule finds
complete steps there; setting a step aside copies it (no folder renames).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional, Union

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gptjax import hf
from gptjax import model as model_lib
from gptjax import paths

ITEMS = ("params", "opt_state", "meta")
# ModelConfig fields a run may change when it starts from trained weights: they do not change parameter shapes.
RUNTIME_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "param_dtype", "attention_impl", "remat")
COMMIT_FILE = "commit_success.txt"  # orbax 0.12: written into the step folder before it is renamed into place.
_TMP_MARKER = ".orbax-checkpoint-tmp"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"  # The run's config (its `model` section is the model actually trained).
TOKENIZER_DIR = "tokenizer"


class Checkpointer:
  """Saves and restores training checkpoints of one run directory."""

  def __init__(self, directory: Union[str, os.PathLike], *, max_to_keep: int = 3, keep_best: bool = True,
               async_save: bool = True, read_only: bool = False):
    """Opens (and creates) `directory`, moving incomplete step folders out of orbax's way first.

    Args:
      directory: the checkpoint folder, usually `<workdir>/checkpoints`.
      max_to_keep: how many of the newest steps to keep (>= 1).
      keep_best: also keep the step with the lowest `val_loss` among those saved with one.
      async_save: write in a background thread while training goes on.
      read_only: never write or delete (used by `gptjax.load`).
    """
    if max_to_keep < 1:
      raise ValueError(f"checkpoint.max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = paths.path(directory)  # Absolute when local (orbax requires it), or a cloud URI.
    if not read_only:
      if jax.process_index() == 0:
        self.directory.mkdir(parents=True, exist_ok=True)
        set_aside_incomplete(self.directory)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("gptjax_checkpoint_scan")
    policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
    if keep_best:
      # BestN keeps the last n after sorting; reverse=True sorts by descending loss, so the lowest is kept.
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics["val_loss"], reverse=True, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax write each step's metrics to disk (so the best survives a restart); which steps are
        # kept is the preservation policy's call alone.
        best_fn=lambda metrics: metrics["val_loss"], best_mode="min",
        # read_only is ours to enforce (`save` refuses): orbax's own flag only adds warnings on every load.
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only, create=not read_only)
    self.read_only = read_only
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def all_steps(self) -> list[int]:
    """Complete steps on disk, oldest first (a read-only manager does not set incomplete ones aside)."""
    return sorted(s for s in self.manager.all_steps() if not missing_parts(self.directory / str(s)))

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> Optional[int]:
    """The kept step with the lowest validation loss, or None when no step was saved with one."""
    scored = [(metrics["val_loss"], step) for step in self.all_steps()
              if (metrics := self.manager.metrics(step)) and "val_loss" in metrics]
    return min(scored)[1] if scored else None

  def save(self, step: int, params: Any, opt_state: Any, meta: dict, val_loss: Optional[float] = None) -> None:
    """Starts saving `step` (asynchronously unless disabled); raises an earlier async save's error, if any."""
    if self.read_only:
      raise ValueError(f"This Checkpointer of {self.directory} was opened read-only")
    metrics = None if val_loss is None else {"val_loss": float(val_loss)}
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(dict(meta, step=step))), metrics=metrics, force=True)
    self.manager.check_for_errors()  # orbax#605: async failures are otherwise silent until the next wait.

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None
              ) -> tuple[Any, Any, dict]:
    """Restores `step` into the given abstract targets (`jax.ShapeDtypeStruct`s with shardings).

    Args:
      step: a step in `all_steps()`.
      abstract_params: target tree for the parameters; its shardings decide where the arrays go.
      abstract_opt_state: target for the optimizer state, or None to skip it (inference).

    Returns:
      (params, opt_state or None, meta dict).
    """
    if step not in self.all_steps():
      raise FileNotFoundError(f"No complete checkpoint for step {step} in {self.directory}; complete steps: "
                              f"{self.all_steps()}")
    args = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
    if abstract_opt_state is not None:
      args["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"Checkpoint step {step} in {self.directory} does not match the model being restored "
                       f"into (a different model config or optimizer?): {e}") from e
    opt_state = restored["opt_state"] if abstract_opt_state is not None else None
    return restored["params"], opt_state, dict(restored["meta"])

  def restore_item(self, step: int, item: str, abstract: Any = None) -> Any:
    """Restores one item of `step` ('params', 'opt_state' into `abstract`; 'meta' as a dict).

    Raises:
      UnreadableCheckpointError: the step looks complete but the item cannot be read (a corrupted file, a
        truncated copy, a target that does not match); the message names the step and the item.
    """
    args = {item: ocp.args.JsonRestore() if item == "meta" else ocp.args.StandardRestore(abstract)}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))[item]
    except Exception as e:  # orbax and tensorstore raise many types for one cause: this item cannot be read.
      raise UnreadableCheckpointError(step, item, self.directory, e) from e
    return dict(restored) if item == "meta" else restored

  def set_aside(self, step: int, why: str) -> paths.epath.Path:
    """Moves step `step` out of orbax's view to `<step>.<why>-<n>` (kept for inspection, never restored)."""
    target = _free_name(self.directory, f"{step}.{why}")
    (self.directory / str(step)).rename(target)
    self.manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until every save started so far is on disk; raises if one failed."""
    self.manager.wait_until_finished()
    self.manager.check_for_errors()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


class UnreadableCheckpointError(ValueError):
  """A step whose folder is complete but one of whose items cannot be read."""

  def __init__(self, step: int, item: str, directory: paths.PathLike, cause: BaseException):
    self.step, self.item = step, item
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    super().__init__(f"Checkpoint step {step} in {directory}: item '{item}' cannot be read "
                     f"({type(cause).__name__}: {first_line[:300]})")


def missing_parts(step_dir: paths.epath.Path) -> list[str]:
  """What a step folder lacks to be a complete checkpoint (empty when complete)."""
  missing = [] if (step_dir / COMMIT_FILE).is_file() else [COMMIT_FILE]
  return missing + [item for item in ITEMS if not (step_dir / item).is_dir()]


def set_aside_incomplete(directory: paths.epath.Path) -> list[paths.epath.Path]:
  """Warns about, and renames out of orbax's view, step folders that a killed save left incomplete.

  Returns:
    The new paths of the folders set aside.
  """
  if not directory.is_dir():  # In an object store a new folder exists only once it holds an object.
    return []
  complete, incomplete = [], []
  for path in directory.iterdir():
    if path.is_dir() and re.fullmatch(r"\d+", path.name):
      (incomplete if missing_parts(path) else complete).append(path)
  newest = max((int(p.name) for p in complete), default=None)
  fallback = f"the newest complete step is {newest}" if newest is not None else "no complete step exists"
  for path in directory.iterdir():
    if _TMP_MARKER in path.name:
      logging.warning("Checkpoint %s was left unfinished by an interrupted save; skipping it (orbax removes it); "
                      "%s.", path, fallback)
  moved = []
  for path in sorted(incomplete, key=lambda p: int(p.name)):
    target = _free_name(directory, f"{path.name}.incomplete")
    logging.warning("Checkpoint step %s in %s is incomplete (missing %s: the save was interrupted); skipping it "
                    "and moving it to %s; %s.", path.name, directory, ", ".join(missing_parts(path)),
                    target.name, fallback)
    path.rename(target)
    moved.append(target)
  return moved


def _free_name(directory: paths.epath.Path, stem: str) -> paths.epath.Path:
  n = 0
  while (directory / f"{stem}-{n}").exists():
    n += 1
  return directory / f"{stem}-{n}"


# ---------------------------------------------------------------------------------------------------------------
# Run directories (`gptjax.load(workdir)`) and `config.init_from`.


def is_workdir(path: Union[str, os.PathLike]) -> bool:
  """True for a language-model run folder of `gptjax.train`: a `config.json` beside a `checkpoints/` folder.

  A fine-tuning run folder is not one: its checkpoints hold the task head too, and its model is `<path>/best`
  (a Hugging Face folder with the head), which `gptjax.load` and `init_from` read instead.
  """
  path = paths.path(path)
  if not ((path / CONFIG_FILE).is_file() and (path / CHECKPOINT_DIR).is_dir()):
    return False
  try:
    return "finetune" not in json.loads((path / CONFIG_FILE).read_text())
  except ValueError:
    return True


def read_run_config(workdir: Union[str, os.PathLike]) -> dict:
  """The run's config as saved by the trainer (a plain dict)."""
  return json.loads((paths.path(workdir) / CONFIG_FILE).read_text())


def load_workdir(workdir: Union[str, os.PathLike], step: Union[int, str] = "latest"):
  """Reads the parameters of a trained run (not its optimizer state) onto the default device.

  Args:
    workdir: the folder passed to `gptjax.train --workdir`.
    step: 'latest', 'best' (lowest validation loss kept) or a step number.

  Returns:
    (ModelConfig, params, step): plain parameter arrays and the step they come from.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  workdir = paths.path(workdir)
  if not is_workdir(workdir):
    raise FileNotFoundError(f"{workdir} is not a gptjax run folder: expected {CONFIG_FILE} and {CHECKPOINT_DIR}/")
  config = model_lib.ModelConfig.from_dict(read_run_config(workdir)["model"])
  ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"{workdir / CHECKPOINT_DIR} holds no complete checkpoint yet")
    if step == "latest":
      chosen = steps[-1]
    elif step == "best":
      chosen = ckpt.best_step()
      if chosen is None:
        raise ValueError(f"No checkpoint in {workdir} was saved with a validation loss; use step='latest'")
    elif isinstance(step, int) and step in steps:
      chosen = step
    else:
      raise ValueError(f"step must be 'latest', 'best' or one of the saved steps {steps}, got {step!r}")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = nn.meta.unbox(jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0))))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    params, _, _ = ckpt.restore(chosen, target)
  finally:
    ckpt.close()
  return config, params, chosen


def initial_weights(init_from: str, requested: model_lib.ModelConfig):
  """The model config and (for fine-tuning) host weights that `config.init_from` names.

  Args:
    init_from: 'scratch' (or ''), a gptjax run folder, a Hugging Face folder, or a Hugging Face hub name.
    requested: the config's own model (`config.model`).

  Returns:
    (model_config, params or None, description). For trained weights the architecture is theirs; only
    `RUNTIME_MODEL_FIELDS` (dropout, dtypes, attention implementation, remat) come from `requested`.
  """
  if init_from in ("", "scratch"):
    return requested, None, "scratch"
  path = paths.path(init_from)
  if (path / "best" / "finetune.json").is_file() and not is_workdir(path):
    path = path / "best"  # A fine-tuning run folder: its best model.
  if path.is_dir() and is_workdir(path):
    loaded, params, step = load_workdir(path)
    params = jax.device_get(params)
    description = f"gptjax run {path} (step {step})"
  elif path.is_dir() and hf.is_hf_folder(path):
    with paths.local_copy(path) as local:  # safetensors reads local files.
      loaded, params = hf.load_hf(local)
    description = f"Hugging Face folder {path}"
  elif path.exists() or init_from.startswith((".", "/", "~")) or paths.is_uri(init_from):
    raise FileNotFoundError(f"config.init_from={init_from!r} is neither 'scratch', a gptjax run folder (config.json "
                            f"+ checkpoints/) nor a Hugging Face folder (config.json + model.safetensors)")
  else:
    loaded, params = hf.load_hf(hf.download(init_from))
    description = f"Hugging Face model {init_from!r}"
  model_config = dataclasses.replace(loaded, **{k: getattr(requested, k) for k in RUNTIME_MODEL_FIELDS})
  ignored = {k: (v, getattr(model_config, k)) for k, v in requested.to_dict().items()
             if k not in RUNTIME_MODEL_FIELDS and k != "decode" and v != getattr(model_config, k)}
  if ignored:
    logging.info("init_from %s: its architecture wins over config.model for %s",
                 init_from, ", ".join(f"{k} ({new} instead of {old})" for k, (old, new) in ignored.items()))
  return model_config, params, description
