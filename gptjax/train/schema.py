"""The one config schema of every training run, checked whole before anything runs.

Pre-training, fine-tuning and distillation read the same sections (`configs/default.py` comments every field):
`model`, `data` (pre-training's and distillation's corpus), `finetune` (present = a fine-tuning run: a GPT-1 task
head, or source -> target generation with `task = 'generation'`), `distill` (a `teacher` = a distillation run),
`opt`, `train`, `eval`, `checkpoint`, `mesh`, `init_from`, `seed`. Lengths are in steps (`train.steps`) and warmup
in steps (`opt.warmup_steps`) for every kind of run; a fine-tuning config states its epochs as the arithmetic
behind its step count.

`check(config)` runs before the data is read and before the first compile, and each error names the field, the
value and the allowed range, so a mistake costs seconds, not the training before the first evaluation. Checks
that need the data or the mesh (both splits against the window, the batch against the devices) are made by the
loop right after those exist, still before step 1.
"""

from __future__ import annotations

import numbers
from typing import Any


class ConfigError(ValueError):
  """A config value outside its allowed range; the message names the field."""


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _int(config, dotted: str, low: int, high: float = float("inf"), note: str = "") -> int:
  value = _get(config, dotted)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
    bound = f">= {low}" if high == float("inf") else f"in [{low}, {high}]"
    raise ConfigError(f"config.{dotted}={value!r}: must be an integer {bound}{note}")
  return int(value)


def _float(config, dotted: str, low: float, high: float = float("inf"), *, low_open: bool = False,
           high_open: bool = False, note: str = "") -> float:
  value = _get(config, dotted)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if ok:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
  if not ok:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    raise ConfigError(f"config.{dotted}={value!r}: must be a number in {left}{low}, {high}{right}{note}")
  return float(value)


def is_finetuning(config) -> bool:
  """A config with a `finetune` section trains a GPT-1 task head (`gptjax.train.objectives.Finetuning`)."""
  return "finetune" in config


def is_distillation(config) -> bool:
  """A config naming a `distill.teacher` trains a student on it (`gptjax.train.distill.Distillation`)."""
  return bool("distill" in config and config.distill.get("teacher"))


def check(config) -> None:
  """Raises `ConfigError` naming the first field outside its allowed range.

  Args:
    config: a ConfigDict shaped like `configs/default.py` (plus `finetune` for fine-tuning).
  """
  _int(config, "seed", 0)
  _int(config, "train.steps", 1)
  _int(config, "train.batch_size", 1)
  _int(config, "train.grad_accum_steps", 1)
  _int(config, "train.log_every", 1)
  _int(config, "train.eval_every", 0, note=" (0 = once per epoch)")
  _int(config, "train.seq_len", 0, note=" (0 = model.block_size)")
  _float(config, "train.peak_flops_per_device", 0.0, note=" (0 = look the device up)")
  steps, batch, accum = config.train.steps, config.train.batch_size, config.train.grad_accum_steps
  if batch % accum:
    raise ConfigError(f"config.train.batch_size={batch} must be divisible by config.train.grad_accum_steps={accum}")
  profile = tuple(config.train.get("profile_steps", ()) or ())
  if profile and (len(profile) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in profile)
                  or not 1 <= profile[0] <= profile[1] <= steps):
    raise ConfigError(f"config.train.profile_steps={profile!r}: must be () (off) or (first, last) with "
                      f"1 <= first <= last <= config.train.steps={steps}")

  _float(config, "opt.lr", 0.0)
  _int(config, "opt.warmup_steps", 0)
  decay = _int(config, "opt.decay_steps", 0, note=" (0 = config.train.steps)") or steps
  if config.opt.warmup_steps >= decay:
    raise ConfigError(f"config.opt.warmup_steps={config.opt.warmup_steps} must be smaller than the decay length "
                      f"{decay} (config.opt.decay_steps, or config.train.steps when that is 0)")
  _float(config, "opt.min_lr_ratio", 0.0, 1.0)
  _float(config, "opt.weight_decay", 0.0)
  _float(config, "opt.b1", 0.0, 1.0, high_open=True)
  _float(config, "opt.b2", 0.0, 1.0, high_open=True)
  _float(config, "opt.eps", 0.0, low_open=True)
  _float(config, "opt.grad_clip_norm", 0.0, note=" (0 = no clipping)")

  _int(config, "eval.batch_size", 0, note=" (0 = the training microbatch)")
  _int(config, "eval.num_batches", 0, note=" (0 = the whole validation split)")
  _int(config, "eval.early_stop_patience", 0, note=" (0 = never stop early)")
  _float(config, "eval.early_stop_min_delta", 0.0)
  _int(config, "eval.tasks_max_examples", 0, note=" (0 = all)")

  _int(config, "checkpoint.every_steps", 0, note=" (0 = train.eval_every)")
  _int(config, "checkpoint.max_to_keep", 1)

  for axis in ("data", "fsdp", "tensor"):
    value = config.mesh[axis]
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
      raise ConfigError(f"config.mesh.{axis}={value!r}: must be a positive integer or -1 (all remaining devices)")
  if "cpu_devices" in config.mesh:
    _int(config, "mesh.cpu_devices", 0, note=" (0 = as many as there are cores and divide the batch)")
  if [config.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
    raise ConfigError(f"config.mesh: at most one of data, fsdp, tensor may be -1, got {config.mesh.to_dict()}")

  for field in ("dropout_rate", "attention_dropout_rate"):
    if field in config.model:
      _float(config, f"model.{field}", 0.0, 1.0, high_open=True)

  if is_distillation(config):
    from gptjax.train import distill  # pylint: disable=g-import-not-at-top
    distill.check(config)
  if is_finetuning(config):
    from gptjax import tasks  # pylint: disable=g-import-not-at-top
    ft = config.finetune
    if ft.task not in tasks.TASKS + ("generation",):
      raise ConfigError(f"config.finetune.task={ft.task!r}: must be one of {tasks.TASKS + ('generation',)}")
    if ft.task == "generation":  # Source -> target (gptjax/train/seq2seq.py): a template, no head.
      from gptjax.train import seq2seq  # pylint: disable=g-import-not-at-top
      _int(config, "finetune.max_new_tokens", 1)
      seq2seq.check_config(config)
    else:
      _float(config, "finetune.lm_coef", 0.0, note=" (0 turns the LM loss off)")
      _float(config, "finetune.clf_dropout", 0.0, 1.0, high_open=True)
    _int(config, "finetune.max_length", 0, note=" (0 = the model's context)")
    for field in ("train_data", "val_data"):
      if not ft[field]:
        raise ConfigError(f"config.finetune.{field} is empty: name a .jsonl/.json/.csv/.tsv file or "
                          f"tfds:<name>[/<config>][:<split>]")
    if config.init_from in ("", "scratch"):
      raise ConfigError("config.init_from='scratch': fine-tuning needs a pre-trained model (a gptjax run folder, "
                        "a Hugging Face folder or a hub name such as openai-gpt or gpt2)")
  else:
    _float(config, "data.val_fraction", 0.0, 1.0, low_open=True, high_open=True)
    _int(config, "data.builtin_max_bytes", 1)
    if not config.data.source:
      raise ConfigError("config.data.source is empty: 'builtin:python', 'text:<glob>' or 'tfds:<name>'")
