"""Training: a sharded `TrainState`, pure train/eval steps, and the loop that evaluates, logs and checkpoints.

`train_and_evaluate(config, workdir)` is the whole run (`python -m gptjax.train` calls it):

1. data: `gptjax.data.prepare` tokenises the source once (cached) and saves the tokenizer to `<workdir>/tokenizer`;
2. model and optimizer from `config.model` / `config.opt`, or the architecture and weights of `config.init_from`;
3. state: `eval_shape` of the boxed init -> logical partition specs -> `jit(init, out_shardings=...)`, so no
   device ever holds an unsharded copy; or, when `<workdir>/checkpoints` has a step, a restore onto this mesh;
4. loop: `train_step(state, batch, rng)` is jitted with donated state; batch k is drawn from (seed, k) and its
   dropout key is `fold_in(rng, k)`, so a resumed run repeats an uninterrupted one exactly. Each step's loss is
   read on the host one step behind (the device is never idle) and a NaN/inf stops the run naming the step;
5. every `eval_every` steps the validation loss; every `checkpoint.every_steps` a save; at the end a final save.

Step numbers count updates: "step k" is the state after k updates, and the train loss logged at step k is that of
the k-th update's batch. The loss is the sum of per-token cross-entropies (float32) over the count of target
tokens, so gradient accumulation gives the large-batch update (`gptjax.optim.accumulate_gradients`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from gptjax import checkpoint as checkpoint_lib
from gptjax import data as data_lib
from gptjax import metrics as metrics_lib
from gptjax import model as model_lib
from gptjax import optim
from gptjax import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. Leaves are plain (unboxed) arrays; their shardings live beside, in a like tree.

  Attributes:
    step: int32 scalar, updates applied so far.
    params: the model parameters (float32 unless `param_dtype` says otherwise).
    opt_state: the optax state.
  """
  step: jax.Array
  params: Any
  opt_state: Any


# ---------------------------------------------------------------------------------------------------------------
# Pure functions: loss, steps, state construction.


def loss_fn(params, tokens_BL1: jax.Array, rng: Optional[jax.Array], *, model: model_lib.GPT,
            deterministic: bool) -> tuple[jax.Array, jax.Array]:
  """Summed next-token cross-entropy (float32) and the number of target tokens.

  Args:
    params: parameter tree.
    tokens_BL1: int [B, L+1]: inputs are [:, :-1], targets [:, 1:].
    rng: dropout key (unused when `deterministic`).
    model: the `GPT` module.
    deterministic: True for evaluation (dropout off).

  Returns:
    (loss_sum, num_tokens), both float32 scalars.
  """
  inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
  rngs = None if deterministic else {"dropout": rng}
  logits_BLV = model.apply({"params": params}, inputs_BL, deterministic=deterministic, rngs=rngs)
  nll_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)
  return jnp.sum(nll_BL), jnp.asarray(nll_BL.size, jnp.float32)


def make_train_step(model: model_lib.GPT, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                    num_microbatches: int = 1):
  """The pure `train_step(state, batch, rng) -> (state, metrics)`.

  `rng` is the run's dropout key; the step's own key is `fold_in(rng, state.step)`. `metrics` holds the mean
  train loss of the batch and the global gradient norm (before clipping).
  """
  batch_sharding = sharding.batch_sharding(mesh)

  def micro_loss(params, microbatch, rng):
    # Each microbatch is spread over every data-parallel device, not left on the few that hold its rows.
    microbatch = jax.lax.with_sharding_constraint(microbatch, batch_sharding)
    return loss_fn(params, microbatch, rng, model=model, deterministic=False)

  def train_step(state: TrainState, tokens_BL1: jax.Array, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if num_microbatches > 1:
      # Microbatch i takes rows i, i + M, i + 2M, ...: rows every device already holds (the sum is unchanged).
      B = tokens_BL1.shape[0]
      tokens_BL1 = tokens_BL1.reshape(B // num_microbatches, num_microbatches, -1).swapaxes(0, 1).reshape(B, -1)
    loss, grads = optim.accumulate_gradients(micro_loss, state.params, tokens_BL1, num_microbatches, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: model_lib.GPT):
  """The pure `eval_step(params, batch) -> (loss_sum, num_tokens)`, dropout off."""
  def eval_step(params, tokens_BL1):
    return loss_fn(params, tokens_BL1, None, model=model, deterministic=True)
  return eval_step


def abstract_state(config: model_lib.ModelConfig, tx: optax.GradientTransformation):
  """The boxed `TrainState` as shapes only, and the init function that builds it.

  Returns:
    (init_boxed, abstract): `init_boxed(rng)` builds the state with parameters (and Adam moments) boxed in
    `nn.LogicallyPartitioned`; `abstract = jax.eval_shape(init_boxed, key)`.
  """
  def init_boxed(rng):
    params = model_lib.init_params(config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init_boxed, jax.eval_shape(init_boxed, jax.random.key(0))


def state_shardings(config: model_lib.ModelConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
  """(shardings, shapes): `NamedSharding`s of the unboxed `TrainState` on `mesh`, and its ShapeDtypeStructs."""
  _, boxed = abstract_state(config, tx)
  return sharding.tree_shardings(boxed, mesh), nn.meta.unbox(boxed)


def init_train_state(config: model_lib.ModelConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     rng: jax.Array, params: Any = None) -> tuple[TrainState, TrainState]:
  """Builds the train state directly in its sharded layout.

  Args:
    config: the model.
    tx: the optimizer.
    mesh: device mesh.
    rng: init key (ignored when `params` is given).
    params: optional host arrays (pretrained weights) to start from, shaped like the model's parameters.

  Returns:
    (state, shardings): the state at step 0 and the like tree of `NamedSharding`s.
  """
  init_boxed, _ = abstract_state(config, tx)
  shardings, shapes = state_shardings(config, tx, mesh)
  # No axis rules in scope here: out_shardings place the result, and flax's DenseGeneral would otherwise apply
  # its 4-D logical names to the 2-D kernel it initialises first.
  if params is None:
    state = jax.jit(lambda r: nn.meta.unbox(init_boxed(r)), out_shardings=shardings)(rng)
  else:
    params = _put_params(params, shapes.params, shardings.params)
    state = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
                    out_shardings=shardings)(params)
  return state, shardings


def _put_params(params, shapes, shardings):
  """Host arrays -> sharded device arrays of the model's dtypes; names the first mismatched parameter."""
  flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  try:
    flat_params = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"The initial parameters do not have the model's structure: {e}") from None
  out = []
  for (path, shape), value, target in zip(flat_shapes, flat_params, treedef.flatten_up_to(shardings)):
    value = np.asarray(value)
    if value.shape != shape.shape:
      raise ValueError(f"Parameter {jax.tree_util.keystr(path)}: checkpoint shape {value.shape}, model shape "
                       f"{shape.shape}")
    value = value.astype(shape.dtype)
    # Every process holds the whole host array and contributes the slices its devices own.
    out.append(jax.make_array_from_callback(value.shape, target, lambda index, v=value: v[index]))
  return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation.


def evaluate(eval_step, params, dataset: data_lib.TokenDataset, mesh: jax.sharding.Mesh, *, batch_size: int,
             seq_len: int, num_batches: Optional[int]) -> dict[str, float]:
  """Validation loss (mean per target token) and perplexity over a fixed set of windows.

  Args:
    eval_step: the jitted `make_eval_step(model)`.
    params: parameters.
    dataset: the validation split.
    mesh: device mesh (batches are sharded like training batches).
    batch_size: global batch size.
    seq_len: window length L.
    num_batches: how many batches; None covers the split once.

  Returns:
    {'val_loss': ..., 'val_ppl': ...}.
  """
  total, count = 0.0, 0.0
  for rows in dataset.eval_batches(batch_size, seq_len, num_batches, process_index=jax.process_index(),
                                   process_count=jax.process_count()):
    loss_sum, num_tokens = eval_step(params, sharding.global_batch(rows, mesh))
    total += float(loss_sum)
    count += float(num_tokens)
  loss = total / count
  return {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}


# ---------------------------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class _Plan:
  """Numbers derived once from the config and checked against the mesh."""
  steps: int
  batch_size: int
  seq_len: int
  num_microbatches: int
  eval_batch_size: int
  eval_batches: Optional[int]
  log_every: int
  eval_every: int
  checkpoint_every: int


def _plan(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
          mesh: jax.sharding.Mesh) -> _Plan:
  t = config.train
  for key in ("steps", "batch_size", "log_every", "eval_every", "grad_accum_steps"):
    if t[key] < 1:
      raise ValueError(f"config.train.{key} must be >= 1, got {t[key]}")
  seq_len = t.seq_len or model_config.block_size
  if not 1 <= seq_len <= model_config.block_size:
    raise ValueError(f"config.train.seq_len={seq_len} must be in [1, model.block_size={model_config.block_size}]")
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f"config.train.batch_size={t.batch_size} is not divisible by "
                     f"config.train.grad_accum_steps={t.grad_accum_steps}")
  micro = t.batch_size // t.grad_accum_steps
  ways, processes = sharding.batch_divisor(mesh), jax.process_count()
  if micro % ways or micro % processes:
    raise ValueError(f"The microbatch (batch_size {t.batch_size} / grad_accum_steps {t.grad_accum_steps} = {micro}) "
                     f"must be divisible by mesh.data * mesh.fsdp = {ways} and by the {processes} processes")
  eval_batch = config.eval.batch_size or micro
  if eval_batch % ways or eval_batch % processes:
    raise ValueError(f"config.eval.batch_size={eval_batch} must be divisible by mesh.data * mesh.fsdp = {ways} and "
                     f"by the {processes} processes")
  decay = config.opt.decay_steps or t.steps
  if not 0 <= config.opt.warmup_steps < decay:
    raise ValueError(f"config.opt.warmup_steps={config.opt.warmup_steps} must be smaller than the decay length "
                     f"{decay} (config.opt.decay_steps, or config.train.steps when that is 0)")
  every = config.checkpoint.every_steps or t.eval_every
  return _Plan(steps=t.steps, batch_size=t.batch_size, seq_len=seq_len, num_microbatches=t.grad_accum_steps,
               eval_batch_size=eval_batch, eval_batches=config.eval.num_batches or None, log_every=t.log_every,
               eval_every=t.eval_every, checkpoint_every=every)


def _prepare_data(config, workdir: pathlib.Path):
  """Tokenised splits and tokenizer; process 0 goes first so the others reload its tokenizer, never race it."""
  d = config.data
  def prepare():
    return data_lib.prepare(
        d.source, d.tokenizer, cache_dir=d.cache_dir or None, tokenizer_dir=workdir / checkpoint_lib.TOKENIZER_DIR,
        val_fraction=d.val_fraction, tfds_data_dir=d.tfds_data_dir or None, download=d.download,
        builtin_max_bytes=d.builtin_max_bytes, progress=jax.process_index() == 0)
  if jax.process_count() == 1:
    return prepare()
  if jax.process_index() == 0:
    result = prepare()
    multihost_utils.sync_global_devices("gptjax_data")
    return result
  multihost_utils.sync_global_devices("gptjax_data")
  return prepare()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains (or resumes training) as `config` says, writing checkpoints and logs to `workdir`.

  Args:
    config: a config shaped like `configs/default.py`.
    workdir: the run folder; a second call with the same folder resumes from its latest checkpoint.

  Returns:
    The last logged metrics, plus 'step' (the last step reached) and, when any evaluation ran, 'best_val_loss'.

  Raises:
    FloatingPointError: the loss or gradient norm became NaN or infinite; the message names the step and the last
      checkpoint, which is left intact.
  """
  workdir = pathlib.Path(workdir).expanduser().absolute()
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.mesh_from_config(config.mesh)
  c = config.checkpoint
  ckpt = checkpoint_lib.Checkpointer(workdir / checkpoint_lib.CHECKPOINT_DIR, max_to_keep=c.max_to_keep,
                                     keep_best=c.keep_best, async_save=c.async_save)
  try:
    result = _Run(config, workdir, mesh, ckpt).train()
  finally:
    ckpt.close()  # Waits for the last async save, also when a NaN or an interrupt ends the run.
  if config.eval.get("tasks"):
    result["tasks"] = run_eval_tasks(config, workdir)
  return result


def parse_eval_tasks(spec: str) -> list[tuple[str, Optional[str]]]:
  """`config.eval.tasks` -> [(task, data or None)]: entries `task` or `task=data`, separated by ';'."""
  from gptjax import evaluate  # pylint: disable=g-import-not-at-top
  entries = []
  for entry in filter(None, (e.strip() for e in spec.split(";"))):
    task, _, data = entry.partition("=")
    if task.strip() not in evaluate.TASKS:
      raise ValueError(f"config.eval.tasks entry {entry!r}: unknown task {task.strip()!r}; expected one of "
                       f"{evaluate.TASKS}, as 'task' or 'task=data' separated by ';'")
    if not data and task.strip() != "perplexity":
      raise ValueError(f"config.eval.tasks entry {entry!r}: {task.strip()} needs its data, as '{task.strip()}=<source>'")
    entries.append((task.strip(), data.strip() or None))
  return entries


def run_eval_tasks(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, dict]:
  """Evaluates the run's last checkpoint on `config.eval.tasks`; writes `<workdir>/eval_results.json`.

  `perplexity` without data scores the run's own validation documents (the same corpus, split and tokenizer as
  the validation loss, each document scored from `<|endoftext|>`). Runs on process 0 with the parameters gathered
  to one device (the evaluation code is single-device).
  """
  from gptjax import evaluate, language_model  # pylint: disable=g-import-not-at-top
  tasks = parse_eval_tasks(config.eval.tasks)
  if jax.process_index() != 0:
    return {}
  lm = language_model.load(workdir)
  results = {}
  for task, data in tasks:
    if data is None:
      d = config.data
      corpus = data_lib.load_corpus(d.source, val_fraction=d.val_fraction, tfds_data_dir=d.tfds_data_dir or None,
                                    download=False, builtin_max_bytes=d.builtin_max_bytes)
      data, name = list(corpus.val), f"{d.source} (validation split)"
    else:
      name = data
    result = evaluate.run_task(lm, task, data, max_examples=config.eval.tasks_max_examples, progress=False)
    result["data"] = name
    results[f"{task}:{name}"] = result
    logging.info("Evaluation of %s on %s:\n%s", task, name, evaluate.format_table(result))
  (workdir / "eval_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
  return results


class _Run:
  """One call of `train_and_evaluate`: the pieces set up once, then the loop."""

  def __init__(self, config, workdir: pathlib.Path, mesh: jax.sharding.Mesh, ckpt: checkpoint_lib.Checkpointer):
    self.config, self.workdir, self.mesh, self.ckpt = config, workdir, mesh, ckpt
    self.start = ckpt.latest_step()
    requested = model_lib.ModelConfig.from_dict(config.model.to_dict())
    if self.start is not None:
      # Resuming: the architecture is the one this run trained (an init_from model's, say), read from the workdir.
      saved = checkpoint_lib.read_run_config(workdir)["model"]
      self.model_config = model_lib.ModelConfig.from_dict(
          {**saved, **{k: getattr(requested, k) for k in checkpoint_lib.RUNTIME_MODEL_FIELDS}})
      self.init_params, self.init_description = None, None
    else:
      self.model_config, self.init_params, self.init_description = checkpoint_lib.initial_weights(
          config.init_from, requested)
    self.plan = _plan(config, self.model_config, mesh)
    self.tokenizer, self.train_ds, self.val_ds = _prepare_data(config, workdir)
    data_lib.check_vocab_size(self.tokenizer, self.model_config.vocab_size)
    logging.info("Data: train %s, val %s; tokenizer %s.", self.train_ds, self.val_ds, self.tokenizer)
    o = config.opt
    self.tx, self.schedule = optim.make_optimizer(
        lr=o.lr, warmup_steps=o.warmup_steps, total_steps=o.decay_steps or self.plan.steps,
        min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        grad_clip_norm=o.grad_clip_norm)
    self.model = model_lib.GPT(self.model_config)
    # Made by a jitted function so that the keys are global arrays: with several processes a host-made key cannot
    # be placed on devices this process does not own.
    replicated = sharding.replicated(mesh)
    self.init_rng, self.dropout_rng = jax.jit(lambda: tuple(jax.random.split(jax.random.key(config.seed))),
                                              out_shardings=(replicated, replicated))()

  def meta(self, val_loss: Optional[float] = None) -> dict:
    """The checkpoint's JSON item: data position and settings, tokenizer, model."""
    return {
        "data": {"source": self.config.data.source, "tokenizer": self.config.data.tokenizer,
                 "seed": self.config.seed, "batch_size": self.plan.batch_size, "seq_len": self.plan.seq_len},
        "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size,
                      "eos_id": self.tokenizer.eos_id},
        "model": self.model_config.to_dict(),
        "val_loss": val_loss,
    }

  def restore_or_init(self) -> tuple[TrainState, TrainState, int]:
    """(state, shardings, step): the latest checkpoint restored onto this mesh, or a fresh sharded state."""
    if self.start is None:
      state, shardings = init_train_state(self.model_config, self.tx, self.mesh, self.init_rng, self.init_params)
      logging.info("Initialised from %s.", self.init_description)
      return state, shardings, 0
    shardings, shapes = state_shardings(self.model_config, self.tx, self.mesh)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    params, opt_state, meta = self.ckpt.restore(self.start, target.params, target.opt_state)
    step = jax.make_array_from_callback((), shardings.step, lambda _: np.asarray(self.start, np.int32))
    if meta.get("data") != self.meta()["data"]:
      logging.warning("Resuming from step %d with different data settings (%s, now %s): the batches from here on "
                      "differ from those of an uninterrupted run.", self.start, meta.get("data"), self.meta()["data"])
    logging.info("Resumed from step %d of %s.", self.start, self.ckpt.directory)
    return TrainState(step=step, params=params, opt_state=opt_state), shardings, self.start

  def train(self) -> dict[str, Any]:
    config, plan, mesh, ckpt = self.config, self.plan, self.mesh, self.ckpt
    is_main = jax.process_index() == 0
    state, shardings, start = self.restore_or_init()
    if is_main:
      run_config = json.loads(config.to_json())
      run_config["model"] = self.model_config.to_dict()  # The architecture trained, whatever config.model said.
      (self.workdir / checkpoint_lib.CONFIG_FILE).write_text(json.dumps(run_config, indent=2) + "\n")
    logging.info("Model: %s parameters; mesh %s; %d process(es).", f"{model_lib.count_params(state.params):,}",
                 dict(mesh.shape), jax.process_count())
    if start >= plan.steps:
      logging.info("Step %d >= config.train.steps=%d: nothing to train.", start, plan.steps)
      return {"step": start}

    batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    train_step = jax.jit(make_train_step(self.model, self.tx, mesh, plan.num_microbatches),
                         in_shardings=(shardings, batch_sharding, replicated),
                         out_shardings=(shardings, replicated), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(self.model), in_shardings=(shardings.params, batch_sharding),
                        out_shardings=(replicated, replicated))

    def get_batch(step):
      rows = self.train_ds.batch(step, plan.batch_size, plan.seq_len, config.seed,
                                 process_index=jax.process_index(), process_count=jax.process_count())
      return sharding.global_batch(rows, mesh)

    writer = metrics_lib.MetricWriter(self.workdir, enabled=is_main, resume_step=start,
                                      tensorboard=config.train.tensorboard)
    with jax.set_mesh(mesh), sharding.axis_rules():
      started = time.perf_counter()
      compiled = train_step.lower(state, get_batch(start), self.dropout_rng).compile()
    writer.info("Compiled train_step in %.1f s.", time.perf_counter() - started)

    peak = config.train.peak_flops_per_device or metrics_lib.peak_flops_per_device()
    if not peak:
      writer.info("MFU is not reported: no known peak FLOP/s for device kind %r (a CPU has no meaningful one); "
                  "set config.train.peak_flops_per_device to report it.", jax.devices()[0].device_kind)
    flops_token = metrics_lib.flops_per_token(self.model_config, plan.seq_len)
    early_stop = _EarlyStopping(config.eval.early_stop_patience, config.eval.early_stop_min_delta)
    losses: list[float] = []
    pending = None  # (step, device metrics) of the step dispatched last, read on the host one step later.
    last = {}

    def settle():
      """Reads the pending step's metrics on the host; stops the run if they are not finite."""
      nonlocal pending
      if pending is None:
        return
      (step, metrics), pending = pending, None
      loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        ckpt.wait()  # A save still in flight is a good checkpoint too.
        saved = ckpt.latest_step()
        raise FloatingPointError(
            f"Training diverged at step {step}: loss {loss}, gradient norm {grad_norm}. Stopped; the last good "
            f"checkpoint is {'step %d in %s' % (saved, ckpt.directory) if saved is not None else 'none'}. Lower "
            f"config.opt.lr, raise config.opt.warmup_steps, or check the data.")
      losses.append(loss)

    interval_start, interval_steps, step = time.perf_counter(), 0, start
    try:
      while step < plan.steps:
        state, metrics = compiled(state, get_batch(step), self.dropout_rng)
        settle()  # The previous step's metrics: the device is already busy with this one.
        step, interval_steps, pending = step + 1, interval_steps + 1, (step + 1, metrics)
        do_eval = step % plan.eval_every == 0 or step == plan.steps
        do_save = step % plan.checkpoint_every == 0 or step == plan.steps
        if not (do_eval or do_save or step % plan.log_every == 0):
          continue
        settle()  # Nothing unchecked may reach a checkpoint.
        elapsed = time.perf_counter() - interval_start
        record = {"train_loss": float(np.mean(losses)), "lr": float(self.schedule(step - 1)),
                  "tokens_per_sec": interval_steps * plan.batch_size * plan.seq_len / elapsed,
                  "step_time_s": elapsed / interval_steps, "grad_norm": float(metrics["grad_norm"])}
        record["mfu"] = record["tokens_per_sec"] * flops_token / (peak * jax.device_count()) if peak else None
        if do_eval:
          with jax.set_mesh(mesh), sharding.axis_rules():
            record.update(evaluate(eval_step, state.params, self.val_ds, mesh, batch_size=plan.eval_batch_size,
                                   seq_len=plan.seq_len, num_batches=plan.eval_batches))
        writer.info("%s", metrics_lib.format_line(step, plan.steps, record))
        writer.write(step, record)
        last = dict(record, step=step)
        stop = do_eval and early_stop.update(record["val_loss"])
        if stop:
          writer.info("Early stop at step %d: no validation improvement in %d evaluations (best %.4f).",
                      step, early_stop.patience, early_stop.best)
        if do_save or stop:
          ckpt.save(step, state.params, state.opt_state, self.meta(record.get("val_loss")),
                    val_loss=record.get("val_loss"))
        losses.clear()
        interval_start, interval_steps = time.perf_counter(), 0
        if stop:
          break
      settle()
    finally:
      writer.close()
    if math.isfinite(early_stop.best):
      last["best_val_loss"] = early_stop.best
    return last or {"step": step}


class _EarlyStopping:
  """Counts evaluations without an improvement of at least `min_delta`; patience 0 never stops."""

  def __init__(self, patience: int, min_delta: float):
    self.patience, self.min_delta = patience, min_delta
    self.best, self.since_best = math.inf, 0

  def update(self, val_loss: float) -> bool:
    """Records an evaluation; True when the run should stop."""
    if val_loss < self.best - self.min_delta:
      self.best, self.since_best = val_loss, 0
    else:
      self.since_best += 1
    return bool(self.patience) and self.since_best >= self.patience
