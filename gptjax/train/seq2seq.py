"""Conditional fine-tuning, `finetune.task = 'generation'`: source -> target with the loss on the target only.

The objective of the one training loop (`gptjax.train.loop`) for examples `{"source": ..., "target": ...}` laid out
by `finetune.template` (`gptjax/seq2seq.py`: the layout, the mask, prediction). It starts from `init_from`'s
weights and tokenizer, adds the template's missing markers to the tokenizer (the embedding grows to match, new rows
N(0, init_std)), and trains next-token cross-entropy on the target and end-marker tokens, each microbatch's sum
divided by the whole batch's number of target tokens. Validation is the same loss on `finetune.val_data`
(`val_loss`, lower is better, and `val_ppl`); each new best model is exported to `<workdir>/best`: a Hugging Face
folder with the tokenizer and `finetune.json` (the task and template), which `gptjax.load(workdir)` reads and
`lm.predict(sources)` / `python -m gptjax.predict` / `python -m gptjax.evaluate --task generation` use.

Batches are drawn as GPT-1 fine-tuning draws them: epoch e is a permutation of the examples seeded by (seed, e),
so a resumed run sees the batches of an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gptjax import checkpoint as checkpoint_lib
from gptjax import finetune as finetune_lib
from gptjax import metrics as metrics_lib
from gptjax import model as model_lib
from gptjax import seq2seq
from gptjax import tasks as tasks_lib
from gptjax.train import objectives
from gptjax.train import schema

# The `finetune` fields a resume must not change (gptjax/train/guards.py).
_IDENTITY_FIELDS = ("task", "train_data", "val_data", "template", "source_field", "target_field", "max_length",
                    "truncate", "tokenizer")


def check_config(config) -> None:
  """The generation fields of `config.finetune`, before anything runs (called by `schema.check`)."""
  ft = config.finetune
  try:
    seq2seq.GenerationSpec.from_config(ft)
  except (ValueError, TypeError) as e:
    raise schema.ConfigError(f"config.finetune: {e}") from None


class GenerationFinetuning:
  """`config.finetune.task = 'generation'`: the loss, data and export of a source -> target model."""

  name = "generation_finetuning"
  selection = ("val_loss", "min")

  def __init__(self, config, workdir: pathlib.Path, resume_meta: Optional[dict] = None):
    from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
    self.config, self.workdir = config, workdir
    ft = config.finetune
    self.spec = seq2seq.GenerationSpec.from_config(ft)
    tokenizer_dir = workdir / checkpoint_lib.TOKENIZER_DIR
    if resume_meta is not None:
      self.model_config = objectives._resumed_model_config(config, resume_meta)  # pylint: disable=protected-access
      self.tokenizer = load_tokenizer(tokenizer_dir)
      self.ids = seq2seq.add_template_tokens(self.tokenizer, self.spec)
      self.initial_params, self.description = None, None
    else:
      model_config, params, self.tokenizer, self.description = objectives.load_pretrained(config)
      self.ids = seq2seq.add_template_tokens(self.tokenizer, self.spec)
      self.model_config, params = finetune_lib.grow_embedding(
          model_config, params, self.tokenizer.vocab_size, jax.random.fold_in(jax.random.key(config.seed), 1))
      self.initial_params = jax.device_get(params)
      if jax.process_index() == 0:
        self.tokenizer.save(tokenizer_dir)  # With the template's markers: a resume encodes with the same ids.
    max_length = self.spec.max_length or self.model_config.block_size
    if max_length > self.model_config.block_size:
      raise schema.ConfigError(f"config.finetune.max_length={max_length} exceeds the model's context "
                               f"{self.model_config.block_size}")
    read = functools.partial(tasks_lib.read_records, tfds_data_dir=ft.get("tfds_data_dir") or None,
                             download=ft.get("download", True))
    splits = {}
    for field, split in (("train_data", "train"), ("val_data", "validation")):
      records = read(ft[field], default_split=split)
      if not records:
        raise schema.ConfigError(f"config.finetune.{field}={ft[field]!r} has no examples")
      splits[field] = seq2seq.encode_examples(self.spec, self.tokenizer, self.ids, records, max_length)
    length = max(d.tokens.shape[1] for d in splits.values())  # One static shape: one compile.
    self.train_data, self.val_data = (splits[f].padded_to(length) for f in ("train_data", "val_data"))
    batch = config.train.batch_size
    self.steps_per_epoch = len(self.train_data) // batch
    if self.steps_per_epoch < 1:
      raise schema.ConfigError(f"config.finetune.train_data has {len(self.train_data)} examples, fewer than one "
                               f"batch (config.train.batch_size={batch})")
    self.tokens_per_example = length
    logging.info("Generation fine-tuning: %d train / %d val examples of up to %d tokens (template %r), %d steps "
                 "per epoch of batch %d.", len(self.train_data), len(self.val_data), length, self.spec.template,
                 self.steps_per_epoch, batch)

  @staticmethod
  def identity(config) -> dict[str, Any]:
    out = {"objective": GenerationFinetuning.name, "init_from": config.init_from}
    out.update({f"finetune.{k}": objectives._jsonable(config.finetune[k])  # pylint: disable=protected-access
                for k in _IDENTITY_FIELDS if k in config.finetune})
    return out

  def content_identity(self) -> dict[str, Any]:
    t, v = self.train_data, self.val_data
    return {"tokenizer.vocab_size": self.tokenizer.vocab_size,
            "corpus.train": objectives.array_fingerprint(t.tokens, t.prefix_lengths, t.lengths),
            "corpus.val": objectives.array_fingerprint(v.tokens, v.prefix_lengths, v.lengths)}

  def meta(self) -> dict[str, Any]:
    return {"model": self.model_config.to_dict(), "task": self.spec.to_dict(),
            "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size}}

  def init_params(self, rng):
    return model_lib.init_params(self.model_config, rng)

  def normalizer(self, batch) -> dict[str, jax.Array]:
    mask = seq2seq.target_mask(batch["prefix_lengths"], batch["lengths"], batch["tokens"].shape[1])
    weight = batch.get("weight", jnp.ones(mask.shape[:1], jnp.float32))
    return {"tokens": (mask.astype(jnp.float32) * weight[:, None]).sum()}

  def loss(self, params, batch, rng, *, deterministic: bool, normalizer) -> tuple[jax.Array, dict]:
    sums = seq2seq.loss_sums(self.model_config, params, batch, deterministic=deterministic, rng=rng)
    return sums["loss_sum"] / jnp.maximum(normalizer["tokens"], 1.0), {}

  def _rows(self, data: seq2seq.GenerationData, rows) -> dict[str, np.ndarray]:
    return {"tokens": data.tokens[rows], "prefix_lengths": data.prefix_lengths[rows], "lengths": data.lengths[rows]}

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    batch = self.config.train.batch_size
    epoch, index = divmod(step, self.steps_per_epoch)
    rows = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_data))
    return self._rows(self.train_data, objectives.process_rows(rows[index * batch:(index + 1) * batch]))

  def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for rows, weight in finetune_lib._eval_batches(self.val_data, batch_size):  # pylint: disable=protected-access
      rows, weight = objectives.process_rows(rows), objectives.process_rows(weight)
      yield {**self._rows(self.val_data, rows), "weight": weight}

  def eval_step(self, params, batch) -> dict[str, jax.Array]:
    return seq2seq.loss_sums(self.model_config, params, batch, deterministic=True)

  def summarize(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    loss = sum(float(o["loss_sum"]) for o in outputs) / max(sum(float(o["tokens"]) for o in outputs), 1.0)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 80.0))}

  def flops_per_token(self) -> float:
    return metrics_lib.flops_per_token(self.model_config, self.train_data.tokens.shape[1])

  def on_best(self, workdir: pathlib.Path, params, step: int, record: dict) -> None:
    """Exports the new best model to `<workdir>/best` (process 0; every process joins the gather)."""
    from gptjax.language_model import LanguageModel  # pylint: disable=g-import-not-at-top
    host = objectives.gather_to_host(params)
    if jax.process_index() != 0:
      return
    model = LanguageModel(self.model_config, host, self.tokenizer)
    model.head = seq2seq.GenerationHead(self.spec)
    validation = {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_")}
    finetune_lib.replace_folder(workdir / "best", model, extra={"step": step, "metric": "loss", "validation":
                                                                 validation, "init_from": self.config.init_from})

  def result(self, last: dict, early: dict) -> dict[str, Any]:
    best = early.get("best_record")
    return {**last, "metric": "loss", "best_step": early.get("best_step"), "best_metric": early.get("best"),
            "best": None if best is None else {k[len("val_"):]: v for k, v in best.items() if k.startswith("val_")}}

  def finish(self, workdir: pathlib.Path, result: dict) -> None:
    logging.info("Best validation loss %s at step %s; the model is in %s.", result.get("best_metric"),
                 result.get("best_step"), workdir / "best")
