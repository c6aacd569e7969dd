"""The one training loop: a sharded `TrainState`, a pure step over any objective, and the run around it.

`train_and_evaluate(config, workdir)` is a whole run (`python -m gptjax.train` and `gptjax.fit` call it):

1. refuse early: `schema.check` (every field against its range), the mesh against the batch, the workdir lock, the
   checkpoint's identity against this config (`guards.check_resume`), then the data (both splits against the
   window) and its content against the checkpoint's, all before the first compile;
2. state (`gptjax.train.step`): `eval_shape` of the objective's boxed init -> logical partition specs ->
   `jit(init, out_shardings=...)`, so no device ever holds an unsharded copy; or the latest readable checkpoint
   restored onto this mesh;
3. loop: `train_step(state, batch, rng)` is jitted with donated state; batch k is a function of (seed, k), made in
   a background thread while the device runs the step before, and its dropout key is `fold_in(rng, k)`, so a
   resumed run repeats an uninterrupted one bit for bit. Step metrics stay on the device until the next log
   interval (no host synchronisation per step); a NaN/inf then stops the run naming the first bad step, before
   anything unchecked reaches a checkpoint;
4. every `eval_every` steps the objective's validation metrics, early stopping and the best model; every
   `checkpoint.every_steps` a save; SIGTERM/SIGINT: the step in flight finishes, a save, exit 0.

Step numbers count updates: "step k" is the state after k updates; the train loss logged at step k is the mean
over the updates since the last line. Each objective's loss is a sum over the batch divided by the whole batch's
count, so gradient accumulation gives the large-batch update.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gptjax import checkpoint as checkpoint_lib
from gptjax import host_memory
from gptjax import metrics as metrics_lib
from gptjax import optim
from gptjax import paths
from gptjax import sharding
from gptjax.train import guards
from gptjax.train import objectives as objectives_lib
from gptjax.train import schema
from gptjax.train.step import TrainState, init_train_state, make_train_step, put_params, state_shardings  # noqa: F401


# ---------------------------------------------------------------------------------------------------------------
# The plan: numbers derived once from the config and checked against the mesh.


@dataclasses.dataclass
class Plan:
  steps: int
  batch_size: int
  num_microbatches: int
  eval_batch_size: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  profile: tuple[int, ...]


def check_mesh(config, mesh: jax.sharding.Mesh) -> None:
  """The batch against the mesh (and the processes): raises naming the fields."""
  t = config.train
  micro = t.batch_size // t.grad_accum_steps
  ways, processes = sharding.batch_divisor(mesh), jax.process_count()
  if micro % ways or micro % processes:
    raise schema.ConfigError(
        f"The microbatch (config.train.batch_size {t.batch_size} / config.train.grad_accum_steps "
        f"{t.grad_accum_steps} = {micro}) must be divisible by mesh.data * mesh.fsdp = {ways} and by the "
        f"{processes} processes")
  eval_batch = config.eval.batch_size or micro
  if eval_batch % ways or eval_batch % processes:
    raise schema.ConfigError(f"config.eval.batch_size={eval_batch} must be divisible by mesh.data * mesh.fsdp = "
                             f"{ways} and by the {processes} processes")


def split_cpu_cores(config) -> Optional[int]:
  """Applies `config.mesh.cpu_devices` (`sharding.split_cpu_cores`) if JAX has not started yet; the count or None.

  Automatic (0) only for the default mesh (data = all devices, no fsdp or tensor axis) of a single process; a
  positive count is the user's. Called first thing by `train_and_evaluate`, so both `python -m gptjax.train` and
  `gptjax.fit` in a fresh process get it. A step whose buffers outgrow glibc's secondary heaps also gets one
  allocator arena (`gptjax.host_memory.one_arena`).
  """
  m, t = config.mesh, config.train
  requested = m.get("cpu_devices", 0)
  if jax.distributed.is_initialized() or (not requested and (m.data, m.fsdp, m.tensor) != (-1, 1, 1)):
    return None
  micro = t.batch_size // t.grad_accum_steps
  count = sharding.cpu_device_count(requested, [micro, config.eval.batch_size or micro])
  applied = sharding.split_cpu_cores(count)
  try:  # Else the step's buffers would be mapped afresh every step (`gptjax/host_memory.py`).
    host_memory.one_arena_for_training(config.model, max(1, micro // count))
  except (AttributeError, TypeError):  # A fine-tuning config whose model comes from its checkpoint.
    pass
  return applied


def make_plan(config, steps_per_epoch: int) -> Plan:
  t = config.train
  eval_every = t.eval_every or steps_per_epoch
  return Plan(steps=t.steps, batch_size=t.batch_size, num_microbatches=t.grad_accum_steps,
              eval_batch_size=config.eval.batch_size or t.batch_size // t.grad_accum_steps, log_every=t.log_every,
              eval_every=eval_every, checkpoint_every=config.checkpoint.every_steps or eval_every,
              profile=tuple(t.get("profile_steps", ()) or ()))


# ---------------------------------------------------------------------------------------------------------------
# Pieces of the run.


class EarlyStopping:
  """Best evaluation so far and evaluations since; saved in every checkpoint so a resume continues the count.

  `mode` 'min' (a loss) or 'max' (accuracy, ...). An evaluation improves when it beats the best by more than
  `min_delta`; after `patience` evaluations without improvement (0 = never) the run stops.
  """

  def __init__(self, patience: int, min_delta: float, mode: str, state: Optional[dict] = None):
    self.patience, self.min_delta, self.mode = patience, min_delta, mode
    self.state = dict(best=None, best_step=None, best_record=None, since_best=0, stopped=False)
    self.state.update(state or {})

  def update(self, step: int, value: float, record: dict) -> bool:
    """Records an evaluation; True when it is the new best."""
    best = self.state["best"]
    better = best is None or (value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta)
    if better:
      self.state.update(best=value, best_step=step, best_record=dict(record), since_best=0)
    else:
      self.state["since_best"] += 1
      self.state["stopped"] = bool(self.patience) and self.state["since_best"] >= self.patience
    return better

  @property
  def stopped(self) -> bool:
    return self.state["stopped"]


class _Prefetcher:
  """Makes the batches of the next steps in a background thread while the device runs the current one."""

  def __init__(self, make: Callable[[int], Any], start: int, end: int, depth: int = 2):
    self._make, self._next, self._end = make, start, end
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gptjax-batches")
    self._queue: collections.deque = collections.deque()
    for _ in range(depth):
      self._submit()

  def _submit(self):
    if self._next < self._end:
      self._queue.append((self._next, self._pool.submit(self._make, self._next)))
      self._next += 1

  def get(self, step: int):
    queued, future = self._queue.popleft()
    assert queued == step, (queued, step)
    self._submit()
    return future.result()

  def close(self):
    self._pool.shutdown(wait=True, cancel_futures=True)


def _elapsed_eta(started: float, done: int, remaining: int) -> tuple[float, Optional[float]]:
  elapsed = time.perf_counter() - started
  return elapsed, (elapsed / done * remaining if done else None)


# ---------------------------------------------------------------------------------------------------------------
# The run.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, Any]:
  """Trains (or resumes training) as `config` says, writing checkpoints and logs to `workdir`.

  Args:
    config: a config shaped like `configs/default.py` (with a `finetune` section for GPT-1 fine-tuning).
    workdir: the run folder; a second call with the same folder resumes from its latest checkpoint.
    mesh: the device mesh; default `config.mesh` over all devices (tests pass a one-device mesh).

  Returns:
    The last logged metrics, plus 'step' (the last step reached), the best evaluation (`best_val_loss`, or for
    fine-tuning 'metric', 'best_metric', 'best_step', 'best'), and 'stopped_by' ('SIGTERM' / 'SIGINT') when a
    signal ended the run early.

  Raises:
    schema.ConfigError: a config value out of range (before anything runs).
    guards.WorkdirLockedError: another run holds the workdir.
    guards.ResumeMismatchError: the checkpoint was trained with another architecture, tokenizer or data.
    FloatingPointError: the loss or gradient norm became NaN or infinite; the message names the step and the last
      checkpoint, which is left intact.
  """
  schema.check(config)
  if not schema.is_finetuning(config) and config.eval.get("tasks"):
    objectives_lib.parse_eval_tasks(config.eval.tasks)
  workdir = paths.path(workdir)  # A local folder or a cloud URI (gs://...), never a URI mangled into a folder.
  if mesh is None:
    split_cpu_cores(config)
  mesh = mesh or sharding.mesh_from_config(config.mesh)
  check_mesh(config, mesh)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  lock = guards.WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  stop = guards.StopRequest(multiprocess=jax.process_count() > 1)
  try:
    c = config.checkpoint
    ckpt = checkpoint_lib.Checkpointer(workdir / checkpoint_lib.CHECKPOINT_DIR, max_to_keep=c.max_to_keep,
                                       keep_best=c.keep_best, async_save=c.async_save)
    try:
      run = _Run(config, workdir, mesh, ckpt, stop)
      result = run.train()
    finally:
      ckpt.close()  # Waits for the last async save, also when a NaN or an interrupt ends the run.
    if "stopped_by" not in result:
      run.objective.finish(workdir, result)
    return result
  finally:
    stop.restore()
    lock.release()


class _Run:
  """One call of `train_and_evaluate`: the pieces set up once (in the order that refuses early), then the loop."""

  def __init__(self, config, workdir: pathlib.Path, mesh: jax.sharding.Mesh, ckpt: checkpoint_lib.Checkpointer,
               stop: guards.StopRequest):
    self.config, self.workdir, self.mesh, self.ckpt, self.stop = config, workdir, mesh, ckpt, stop
    self.allow_changes = bool(config.checkpoint.get("allow_resume_changes", False))
    self.last_saved: Optional[int] = None
    self.start, self.resume_meta = self._latest_meta()
    if self.start is not None:
      guards.check_resume(self.resume_meta.get("identity", {}), objectives_lib.objective_identity(config),
                          step=self.start, directory=ckpt.directory, allow_changes=self.allow_changes)
    self.objective = objectives_lib.make_objective(config, workdir, self.resume_meta)
    self.content_identity = self.objective.content_identity()
    if self.start is not None:
      guards.check_resume(self.resume_meta.get("identity", {}), self.content_identity,
                          step=self.start, directory=ckpt.directory, allow_changes=self.allow_changes)
      saved_data, data = self.resume_meta.get("data"), self.objective.meta().get("data")
      if saved_data is not None and saved_data != data:
        logging.warning("Resuming from step %d with different data settings (%s, now %s): the batches from here on "
                        "differ from those of an uninterrupted run.", self.start, saved_data, data)
    self.plan = make_plan(config, self.objective.steps_per_epoch)
    o = config.opt
    self.tx, self.schedule = optim.make_optimizer(
        lr=o.lr, warmup_steps=o.warmup_steps, total_steps=o.decay_steps or self.plan.steps,
        min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        grad_clip_norm=o.grad_clip_norm)
    # Made by a jitted function so that the keys are global arrays: with several processes a host-made key cannot
    # be placed on devices this process does not own.
    replicated = sharding.replicated(mesh)
    self.init_rng, self.dropout_rng = jax.jit(lambda: tuple(jax.random.split(jax.random.key(config.seed))),
                                              out_shardings=(replicated, replicated))()

  def _latest_meta(self) -> tuple[Optional[int], Optional[dict]]:
    """The newest step whose meta item reads (older ones are tried when it does not), and that meta."""
    steps = self.ckpt.all_steps()
    errors = []
    for step in reversed(steps):
      try:
        meta = self.ckpt.restore_item(step, "meta")
      except checkpoint_lib.UnreadableCheckpointError as e:
        errors.append(e)
        continue
      self._set_aside_unreadable(errors, step)
      return step, meta
    if errors:
      raise errors[0]
    return None, None

  def _set_aside_unreadable(self, errors, fallback: int) -> None:
    for e in errors:
      if jax.process_index() == 0:
        moved = self.ckpt.set_aside(e.step, "unreadable")
        logging.warning("%s. Falling back to step %d, the previous complete step; the unreadable one was moved "
                        "to %s.", e, fallback, moved)
    errors.clear()

  def meta(self, early: EarlyStopping, pending: list, val: Optional[float]) -> dict:
    return {**self.objective.meta(), "val_loss": val,
            "identity": {**self.objective.identity(self.config), **self.content_identity},
            "loop": {"early_stopping": early.state, "pending": pending}}

  def restore_or_init(self) -> tuple[TrainState, TrainState, int]:
    """(state, shardings, step): the latest readable checkpoint restored onto this mesh, or a fresh sharded state."""
    objective = self.objective
    if self.start is None:
      state, shardings = init_train_state(objective.init_params, self.tx, self.mesh, self.init_rng,
                                          objective.initial_params)
      logging.info("Initialised from %s.", objective.description)
      return state, shardings, 0
    shardings, shapes = state_shardings(objective.init_params, self.tx, self.mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    steps = [s for s in self.ckpt.all_steps() if s <= self.start]
    errors = []
    for step in reversed(steps):
      try:
        meta = self.resume_meta if step == self.start else self.ckpt.restore_item(step, "meta")
        params = self.ckpt.restore_item(step, "params", target.params)
        opt_state = self.ckpt.restore_item(step, "opt_state", target.opt_state)
      except checkpoint_lib.UnreadableCheckpointError as e:
        errors.append(e)
        continue
      # An older step reading into the same target shows the newer ones broken, not the target wrong.
      self._set_aside_unreadable(errors, step)
      self.start, self.resume_meta = step, meta
      step_array = jax.make_array_from_callback((), shardings.step, lambda _: np.asarray(step, np.int32))
      logging.info("Resumed from step %d of %s.", step, self.ckpt.directory)
      return TrainState(step=step_array, params=params, opt_state=opt_state), shardings, step
    first = errors[0]
    raise ValueError(f"{first}. No earlier complete step reads into this model either, so the model or optimizer "
                     f"config probably differs from the checkpoint's; or move {self.ckpt.directory} aside to start "
                     f"over.") from first

  def _run_config(self) -> dict:
    """The run's config as config.json holds it: `model` is the architecture trained, whatever config said."""
    run_config = json.loads(self.config.to_json())
    run_config["model"] = self.objective.model_config.to_dict()
    return run_config

  def train(self) -> dict[str, Any]:
    config, plan, mesh, ckpt, objective = self.config, self.plan, self.mesh, self.ckpt, self.objective
    is_main = jax.process_index() == 0
    state, shardings, start = self.restore_or_init()
    loop_state = (self.resume_meta or {}).get("loop", {})
    early = EarlyStopping(config.eval.early_stop_patience, config.eval.early_stop_min_delta, objective.selection[1],
                          loop_state.get("early_stopping"))
    pending: list[dict] = list(loop_state.get("pending", []))  # Per-step metrics since the last log line.
    run_config = self._run_config()
    if is_main:
      paths.write_atomic(self.workdir / checkpoint_lib.CONFIG_FILE, json.dumps(run_config, indent=2) + "\n")
    logging.info("Model: %s parameters; mesh %s; %d process(es); objective %s.",
                 f"{sum(x.size for x in jax.tree.leaves(state.params)):,}", dict(mesh.shape), jax.process_count(),
                 objective.name)
    writer = metrics_lib.MetricWriter(self.workdir, enabled=is_main, resume_step=start,
                                      tensorboard=config.train.tensorboard, run_config=run_config)
    try:
      if early.stopped:
        writer.info("The run stopped early at step %d (no improvement of %s in %d evaluations; best %s at step %s): "
                    "nothing to train. Use another --workdir to train again.", start, objective.selection[0],
                    early.patience, early.state["best"], early.state["best_step"])
        return objective.result({"step": start}, early.state)
      if start >= plan.steps:
        writer.info("Step %d >= config.train.steps=%d: nothing to train.", start, plan.steps)
        return objective.result({"step": start}, early.state)
      result = self._loop(state, shardings, start, early, pending, writer)
      if "stopped_by" not in result:  # A signal's stop is resumed later: the run has not ended.
        writer.finish(result["step"], (objective.selection[0], early.state["best"]))
      return result
    finally:
      writer.close()

  def _loop(self, state, shardings, start, early, pending, writer) -> dict[str, Any]:
    config, plan, mesh, ckpt, objective = self.config, self.plan, self.mesh, self.ckpt, self.objective
    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    frozen, frozen_shardings = self._frozen()
    train_step = jax.jit(make_train_step(objective, self.tx, mesh, plan.num_microbatches),
                         in_shardings=(shardings, batch_sharding, replicated, frozen_shardings),
                         out_shardings=(shardings, replicated), donate_argnums=(0,))
    eval_step = jax.jit(objective.eval_step, in_shardings=(shardings.params, batch_sharding),
                        out_shardings=replicated)
    put = lambda rows: jax.tree.map(lambda x: sharding.global_batch(x, mesh), rows)
    batches = _Prefetcher(lambda step: put(objective.train_batch(step)), start, plan.steps)
    peak = config.train.peak_flops_per_device or metrics_lib.peak_flops_per_device()
    if not peak:
      writer.info("MFU is not reported: no known peak FLOP/s for device kind %r (a CPU has no meaningful one); "
                  "set config.train.peak_flops_per_device to report it.", jax.devices()[0].device_kind)
    flops_token = objective.flops_per_token()
    tokens_per_step = plan.batch_size * objective.tokens_per_example
    multiprocess = jax.process_count() > 1
    last: dict[str, Any] = {}
    trace: Optional[contextlib.ExitStack] = None  # While profiling: the trace's local folder, uploaded when done.
    try:
      with jax.set_mesh(mesh), sharding.axis_rules():
        started = time.perf_counter()
        first_batch = batches.get(start)
        compiled = train_step.lower(state, first_batch, self.dropout_rng, frozen).compile()
        writer.info("Compiled train_step in %.1f s.", time.perf_counter() - started)
        run_started, unread = time.perf_counter(), []  # unread: (step, device metrics) not yet on the host.
        interval_start, interval_steps, step, batch = time.perf_counter(), 0, start, first_batch

        def flush():
          """Reads the unread steps' metrics on the host; stops the run at the first non-finite one."""
          host = jax.device_get([m for _, m in unread])
          for (s, _), m in zip(unread, host):
            m = {k: float(v) for k, v in m.items()}
            if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
              ckpt.wait()  # A save still in flight is a good checkpoint too.
              saved = ckpt.latest_step()
              raise FloatingPointError(
                  f"Training diverged at step {s}: loss {m['loss']}, gradient norm {m['grad_norm']}. Stopped; the "
                  f"last good checkpoint is {'step %d in %s' % (saved, ckpt.directory) if saved is not None else 'none'}."
                  f" Lower config.opt.lr, raise config.opt.warmup_steps, or check the data.")
            pending.append(m)
          unread.clear()

        while step < plan.steps:
          if self.stop.requested:
            break
          if plan.profile and step + 1 == plan.profile[0]:
            trace = contextlib.ExitStack()
            trace_dir = trace.enter_context(paths.local_folder_for(self.workdir / "tensorboard"))
            jax.profiler.start_trace(os.fspath(trace_dir))
          if batch is None:
            batch = batches.get(step)
          state, metrics = compiled(state, batch, self.dropout_rng, frozen)
          batch = None
          step, interval_steps = step + 1, interval_steps + 1
          unread.append((step, metrics))
          if trace is not None and step == plan.profile[1]:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            trace.close()
            trace = None
            writer.info("Profiled steps %d-%d into %s.", plan.profile[0], plan.profile[1],
                        self.workdir / "tensorboard")
          if multiprocess and ckpt.manager.reached_preemption(step):
            self.stop.signal_name = self.stop.signal_name or "SIGTERM"
          do_eval = step % plan.eval_every == 0 or step == plan.steps
          do_save = step % plan.checkpoint_every == 0 or step == plan.steps
          if not (do_eval or do_save or step % plan.log_every == 0):
            continue
          flush()  # Nothing unchecked may reach a checkpoint.
          if multiprocess and not self.stop.requested:  # SIGINT on one process: every process stops here.
            if multihost_utils.process_allgather(np.int32(self.stop.requested)).max():
              self.stop.signal_name = "SIGINT"
          elapsed = time.perf_counter() - interval_start
          record = {"train_loss": float(np.mean([m["loss"] for m in pending])), "lr": float(self.schedule(step - 1))}
          for key in pending[-1]:
            if key not in ("loss", "grad_norm"):
              record[key] = float(np.mean([m[key] for m in pending]))
          record.update(tokens_per_sec=interval_steps * tokens_per_step / elapsed, step_time_s=elapsed / interval_steps,
                        grad_norm=pending[-1]["grad_norm"])
          record["mfu"] = record["tokens_per_sec"] * flops_token / (peak * jax.device_count()) if peak else None
          improved = False
          if do_eval:
            outputs = [jax.device_get(eval_step(state.params, put(rows)))
                       for rows in objective.eval_batches(plan.eval_batch_size)]
            record.update(objective.summarize(outputs))
            improved = early.update(step, record[objective.selection[0]], record)
          elapsed_s, eta_s = _elapsed_eta(run_started, step - start, plan.steps - step)
          writer.info("%s", metrics_lib.format_line(step, plan.steps, record, elapsed_s=elapsed_s, eta_s=eta_s))
          writer.write(step, record)
          pending.clear()
          last = dict(record, step=step)
          if improved:
            objective.on_best(self.workdir, state.params, step, record)
          if early.stopped:
            writer.info("Early stop at step %d: no %s improvement in %d evaluations (best %.4f at step %d).", step,
                        objective.selection[0], early.patience, early.state["best"], early.state["best_step"])
          if do_save or early.stopped:
            score = record.get(objective.selection[0]) if do_eval else None
            if score is not None and objective.selection[1] == "max":
              score = -score  # The checkpointer keeps the lowest score.
            ckpt.save(step, state.params, state.opt_state, self.meta(early, [], score), val_loss=score)
            self.last_saved = step
          interval_start, interval_steps = time.perf_counter(), 0
          if early.stopped:
            break
        flush()
        if self.stop.requested:
          return self._stopped(state, step, start, early, pending, last)
    finally:
      batches.close()
      if trace is not None:  # Stopped (a signal, a NaN, early stopping) inside the profiled steps: keep the trace.
        jax.profiler.stop_trace()
        trace.close()
    return objective.result(last or {"step": step}, early.state)

  def _frozen(self):
    """(params, shardings) an objective reads but does not train (`frozen_init` boxed + `frozen_params` host), sharded
    by their logical axes like the trained ones; (None, None) for objectives without any."""
    init = getattr(self.objective, "frozen_init", None)
    if init is None:
      return None, None
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.tree_shardings(boxed, self.mesh)
    return put_params(self.objective.frozen_params, nn.meta.unbox(boxed), shardings), shardings

  def _stopped(self, state, step, start, early, pending, last) -> dict[str, Any]:
    """A signal asked the run to stop: save the step just finished (with the unlogged metrics), report."""
    name = self.stop.signal_name
    if step > start and self.last_saved != step:  # That step's save may still be in flight.
      self.ckpt.save(step, state.params, state.opt_state, self.meta(early, list(pending), None))
    self.ckpt.wait()
    saved = self.ckpt.latest_step()
    logging.warning("Stopped by %s at step %d of %d; %s. Run the same command again (same config and --workdir) "
                    "to resume.", name, step, self.plan.steps,
                    f"checkpoint step {saved} saved in {self.ckpt.directory}" if saved is not None
                    else "nothing was trained, so nothing was saved")
    return self.objective.result(dict(last, step=step), early.state) | {"stopped_by": name, "step": step}
