r"""Knowledge distillation: a student GPT trained on a frozen teacher's predictions, an objective of the one loop.

`python -m gptjax.train --config configs/distill.py --workdir W --config.distill.teacher=<workdir | HF folder | hub
name>`. The teacher runs forward (no dropout, no gradient) in the same jitted, sharded step as the student: the
loop places `frozen_params` on the mesh once by their logical axes and passes them to `loss(..., frozen=...)`.

The loss, per target token, summed over the microbatch and divided by the whole batch's target tokens (so gradient
accumulation stays exact, like `LanguageModeling`'s):

  alpha_kd * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + alpha_lm * CE(student, next token)
  + alpha_cos * (1 - cos(student hidden, teacher hidden))      (final hidden states, after ln_f)

Why T^2 (Hinton et al. 2015, section 2): the gradient of the softened KL with respect to a student logit is
(p_student - p_teacher) / T at temperature T, and both probabilities flatten towards uniform as T grows, so the
term's gradients shrink roughly as 1 / T^2; the factor keeps them on the scale of the cross-entropy's whatever T
is. The defaults (T = 2, alpha_kd = alpha_lm = 0.5, alpha_cos = 0) are those of the distillation script that
DistilGPT2 came from (Hugging Face's `research_projects/distillation`; the weights used for the released model
are not published, transformers#2013). `reverse_kl=True` swaps the KL's arguments, KL(student || teacher): the
mode-seeking direction MiniLLM (Gu et al. 2023) argues for. MiniLLM optimises it over sampled sequences with a
policy gradient; here it is the token-level version on the training text. Softmaxes and the KL run in float32.

The student is the teacher's architecture with `num_layers = len(student_layers)`, initialised from those
teacher blocks (renumbered h_0, h_1, ...) with the embeddings, the final LayerNorm and any untied head, as
DistilGPT2 took blocks 0, 2, 4, 7, 9, 11 of GPT-2; or, with `student_layers = ()`, a student from scratch whose
architecture is the teacher's with `config.distill.student`'s non-zero fields. It uses the teacher's tokenizer
(saved as `<workdir>/tokenizer`), so the run folder is an ordinary one: `gptjax.load`, sampling, evaluation,
serving and the Hugging Face export work on it. Validation is the student's own next-token loss and perplexity.

Metrics: `kd_loss` (the KL per token at temperature T, before alpha_kd and T^2), `lm_loss` (cross-entropy per
token) and `cos_loss` (1 - cos per token), beside the weighted total `loss`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gptjax import checkpoint as checkpoint_lib
from gptjax import hf
from gptjax import metrics as metrics_lib
from gptjax import model as model_lib
from gptjax import paths
from gptjax.train import objectives
from gptjax.train import schema

_BLOCK = re.compile(r"h_(\d+)")
_check_int, _check_float = schema._int, schema._float  # pylint: disable=protected-access  (the schema's checks)
STUDENT_FIELDS = ("num_layers", "num_heads", "emb_dim", "mlp_dim")  # `config.distill.student`: 0 = the teacher's.


# ---------------------------------------------------------------------------------------------------------------
# The loss, as pure functions of logits and hidden states.


def kl_sum(p_logits_BLV: jax.Array, q_logits_BLV: jax.Array, temperature: float) -> jax.Array:
  """Sum over tokens of KL(softmax(p / T) || softmax(q / T)), in float32."""
  log_p = jax.nn.log_softmax(p_logits_BLV.astype(jnp.float32) / temperature, axis=-1)
  log_q = jax.nn.log_softmax(q_logits_BLV.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q))


def cosine_sum(a_BLD: jax.Array, b_BLD: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Sum over tokens of 1 - cos(a, b), in float32."""
  a, b = a_BLD.astype(jnp.float32), b_BLD.astype(jnp.float32)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.sum(1.0 - jnp.sum(a * b, axis=-1) / jnp.maximum(norms, eps))


def distill_sums(student: model_lib.GPT, teacher: model_lib.GPT, params, teacher_params, tokens_BL1: jax.Array,
                 rng: Optional[jax.Array], *, deterministic: bool, temperature: float, reverse_kl: bool = False,
                 with_cosine: bool = True) -> dict[str, jax.Array]:
  """The three terms of the distillation loss, each summed over the target tokens of `tokens_BL1`.

  Args:
    student: the student `GPT`.
    teacher: the teacher `GPT` (same vocabulary).
    params: the student's parameters (what is differentiated).
    teacher_params: the teacher's; its outputs are wrapped in `stop_gradient`, so no gradient flows into them.
    tokens_BL1: int [B, L+1]: inputs are [:, :-1], targets [:, 1:].
    rng: the student's dropout key (unused when `deterministic`); the teacher never drops out.
    deterministic: True turns the student's dropout off.
    temperature: T of the softened distributions.
    reverse_kl: KL(student || teacher) instead of KL(teacher || student).
    with_cosine: compute the hidden-state cosine term (needs the same width in both models); else it is 0.

  Returns:
    {'kd': summed KL at temperature T (no T^2), 'lm': summed cross-entropy, 'cos': summed 1 - cos, 'tokens'}.
  """
  inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
  rngs = None if deterministic else {"dropout": rng}
  logits_BLV, hidden_BLD = student.apply({"params": params}, inputs_BL, deterministic=deterministic, rngs=rngs,
                                         return_hidden=True)
  teacher_logits_BLV, teacher_hidden_BLD = jax.lax.stop_gradient(
      teacher.apply({"params": teacher_params}, inputs_BL, deterministic=True, return_hidden=True))
  p, q = (logits_BLV, teacher_logits_BLV) if reverse_kl else (teacher_logits_BLV, logits_BLV)
  lm = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL))
  cos = cosine_sum(hidden_BLD, teacher_hidden_BLD) if with_cosine else jnp.zeros((), jnp.float32)
  return {"kd": kl_sum(p, q, temperature), "lm": lm, "cos": cos,
          "tokens": jnp.asarray(targets_BL.size, jnp.float32)}


# ---------------------------------------------------------------------------------------------------------------
# The student: which teacher blocks, which architecture.


def copy_layers(teacher_params: dict, layers: Sequence[int]) -> dict:
  """The student's parameters: teacher blocks `layers` as h_0, h_1, ..., plus everything outside the blocks
  (wte, wpe, ln_f, lm_head) unchanged."""
  student = {name: value for name, value in teacher_params.items() if not _BLOCK.fullmatch(name)}
  for new, old in enumerate(layers):
    student[f"h_{new}"] = teacher_params[f"h_{old}"]
  return student


def student_config(teacher: model_lib.ModelConfig, distill) -> model_lib.ModelConfig:
  """The student's architecture: the teacher's with `len(student_layers)` blocks, or (from scratch) with the
  non-zero fields of `distill.student`."""
  layers = tuple(distill.student_layers)
  for i in layers:
    if i >= teacher.num_layers:
      raise schema.ConfigError(f"config.distill.student_layers={layers!r}: layer {i} is outside the teacher's "
                               f"{teacher.num_layers} layers (indices 0 to {teacher.num_layers - 1})")
  if layers:
    return model_lib.ModelConfig(**{**teacher.to_dict(), "num_layers": len(layers)})
  overrides = {k: distill.student[k] for k in STUDENT_FIELDS if distill.student[k]}
  if "emb_dim" in overrides and "mlp_dim" not in overrides:
    overrides["mlp_dim"] = 4 * overrides["emb_dim"]  # Both papers' ratio, not the teacher's width.
  try:
    return model_lib.ModelConfig(**{**teacher.to_dict(), **overrides})
  except ValueError as e:
    raise schema.ConfigError(f"config.distill.student={overrides}: on the teacher's architecture this gives no "
                             f"valid model: {e}") from None


def check(config) -> None:
  """The distillation fields, before anything runs (the teacher-dependent ones are checked when it is loaded)."""
  d = config.distill
  if schema.is_finetuning(config):
    raise schema.ConfigError(f"config.distill.teacher={d.teacher!r} with a finetune section: a run either "
                             f"distils or fine-tunes; drop one of them")
  if d.teacher == "scratch":
    raise schema.ConfigError("config.distill.teacher='scratch': the teacher must be a trained model (a gptjax run "
                             "folder, a Hugging Face folder or a hub name such as 'gpt2')")
  layers = d.student_layers
  if (not isinstance(layers, (tuple, list)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
      or any(i < 0 for i in layers) or any(a >= b for a, b in zip(layers, layers[1:]))):
    raise schema.ConfigError(f"config.distill.student_layers={layers!r}: must be teacher block indices >= 0 in "
                             f"increasing order without repeats, e.g. (0, 2, 4, 7, 9, 11), or () for a student "
                             f"from scratch")
  for field in STUDENT_FIELDS:
    _check_int(config, f"distill.student.{field}", 0, note=" (0 = the teacher's)")
  if layers and any(d.student[k] for k in STUDENT_FIELDS):
    raise schema.ConfigError(f"config.distill.student={d.student.to_dict()} with student_layers={tuple(layers)!r}: "
                             f"a student copied from teacher layers has the teacher's shape; set student_layers=() "
                             f"for a student from scratch")
  _check_float(config, "distill.temperature", 0.0, low_open=True)
  for field in ("alpha_kd", "alpha_lm", "alpha_cos"):
    _check_float(config, f"distill.{field}", 0.0)
  if not (d.alpha_kd or d.alpha_lm or d.alpha_cos):
    raise schema.ConfigError("config.distill.alpha_kd, alpha_lm and alpha_cos are all 0: nothing to train on")
  tokenizer = config.data.tokenizer
  if tokenizer == "char" or tokenizer.startswith("bpe:"):
    raise schema.ConfigError(f"config.data.tokenizer={tokenizer!r} would build a new vocabulary, whose ids mean "
                             f"nothing to the teacher: use '' (the teacher's tokenizer) or the teacher's tokenizer "
                             f"folder")


def teacher_tokenizer(config) -> str:
  """Where the student's tokenizer comes from: `config.data.tokenizer`, or ('') the teacher's."""
  return config.data.tokenizer or str(objectives.pretrained_tokenizer_source(config.distill.teacher))


def load_teacher(config) -> tuple[model_lib.ModelConfig, dict, str]:
  """(model config with `config.model`'s runtime fields, host params, description) of `config.distill.teacher`."""
  teacher = config.distill.teacher
  path = paths.path(teacher)
  if (path.exists() or teacher.startswith((".", "/", "~")) or paths.is_uri(teacher)) and not (
      checkpoint_lib.is_workdir(path) or hf.is_hf_folder(path) or hf.is_hf_folder(path / "best")):
    what = "is not a model folder" if path.exists() else "does not exist"
    raise FileNotFoundError(f"config.distill.teacher={teacher!r} {what}: expected a gptjax run folder (config.json "
                            f"+ checkpoints/), a Hugging Face folder (config.json + model.safetensors) or a hub name "
                            f"such as 'gpt2'")
  requested = model_lib.ModelConfig.from_dict(config.model.to_dict())
  try:
    return checkpoint_lib.initial_weights(teacher, requested)
  except FileNotFoundError as e:  # A hub name the hub does not know, or the machine is offline.
    raise FileNotFoundError(f"config.distill.teacher={teacher!r}: {e}") from None


def _student_run(config, model_config: model_lib.ModelConfig) -> ml_collections.ConfigDict:
  """The config `LanguageModeling` reads for the student: its architecture, from scratch (this objective sets the
  copied weights), on the teacher's tokenizer."""
  run = config.copy_and_resolve_references()
  with run.unlocked():
    run.model = ml_collections.ConfigDict(model_config.to_dict())
    run.init_from = "scratch"
    run.data.tokenizer = teacher_tokenizer(config)
  return run


# ---------------------------------------------------------------------------------------------------------------
# The objective.


class Distillation(objectives.LanguageModeling):
  """A student trained on `config.distill.teacher`'s predictions over `config.data` (the module docstring)."""

  name = "distillation"

  def __init__(self, config, workdir: pathlib.Path, resume_meta: Optional[dict] = None):
    d = config.distill
    self.distill = d
    self.teacher_config, teacher_params, teacher_description = load_teacher(config)
    model_config = student_config(self.teacher_config, d)  # On resume too: checks student_layers on this teacher.
    if d.alpha_cos and model_config.emb_dim != self.teacher_config.emb_dim:
      raise schema.ConfigError(f"config.distill.alpha_cos={d.alpha_cos}: the cosine term compares hidden states, but "
                               f"the student is {model_config.emb_dim} wide and the teacher "
                               f"{self.teacher_config.emb_dim}; set alpha_cos=0 or keep the teacher's emb_dim")
    super().__init__(_student_run(config, model_config), workdir, resume_meta)
    layers = tuple(d.student_layers)
    if resume_meta is None:
      self.initial_params = copy_layers(teacher_params, layers) if layers else None
      self.description = (f"teacher layers {layers} of {teacher_description}" if layers
                          else f"scratch (a {model_config.num_layers}-layer student of {teacher_description})")
    self.frozen_params = teacher_params
    self.teacher_description = teacher_description
    self.teacher = model_lib.GPT(self.teacher_config)
    self.with_cosine = model_config.emb_dim == self.teacher_config.emb_dim

  @staticmethod
  def identity(config) -> dict[str, Any]:
    """What a resume must not change: the teacher, the student's shape, the data and the tokenizer."""
    d = config.distill
    out = {"objective": Distillation.name, "distill.teacher": d.teacher,
           "distill.student_layers": objectives._jsonable(d.student_layers),  # pylint: disable=protected-access
           "data.source": config.data.source, "data.tokenizer": teacher_tokenizer(config)}
    if not d.student_layers:
      out.update({f"distill.student.{k}": d.student[k] for k in STUDENT_FIELDS})
    return out

  def content_identity(self) -> dict[str, Any]:
    # The teacher's weights too: a teacher folder trained further since is another teacher.
    return {**super().content_identity(),
            "teacher.weights": objectives.array_fingerprint(*jax.tree.leaves(self.frozen_params))}

  def meta(self) -> dict[str, Any]:
    d = self.distill
    return {**super().meta(), "distill": {
        "teacher": d.teacher, "teacher_model": self.teacher_config.to_dict(), "description": self.teacher_description,
        "student_layers": list(d.student_layers), "temperature": d.temperature, "alpha_kd": d.alpha_kd,
        "alpha_lm": d.alpha_lm, "alpha_cos": d.alpha_cos, "reverse_kl": d.reverse_kl}}

  def frozen_init(self, rng):
    """The teacher's boxed parameters (shapes and logical axes only matter: the loop places `frozen_params`)."""
    return model_lib.init_params(self.teacher_config, rng)

  def loss(self, params, batch, rng, *, deterministic: bool, normalizer, frozen=None) -> tuple[jax.Array, dict]:
    if frozen is None:
      raise ValueError("Distillation.loss needs the teacher's parameters as frozen=")
    d = self.distill
    sums = distill_sums(self.model, self.teacher, params, frozen, batch["tokens"], rng, deterministic=deterministic,
                        temperature=d.temperature, reverse_kl=d.reverse_kl, with_cosine=self.with_cosine)
    count = normalizer["tokens"]
    kd, lm, cos = sums["kd"] / count, sums["lm"] / count, sums["cos"] / count
    loss = d.alpha_kd * d.temperature ** 2 * kd + d.alpha_lm * lm + d.alpha_cos * cos
    return loss, {"kd_loss": kd, "lm_loss": lm, "cos_loss": cos}

  def flops_per_token(self) -> float:
    # The student's forward and backward (6 per parameter) and the teacher's forward (2 per parameter).
    return (metrics_lib.flops_per_token(self.model_config, self.seq_len)
            + metrics_lib.flops_per_token(self.teacher_config, self.seq_len) / 3)
