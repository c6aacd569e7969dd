"""Distillation (gptjax/train/distill.py): the loss against its formula (T^2, reverse KL), a student that copies
every teacher layer is the teacher (KD 0, same logits), the copied blocks are the named ones, gradients reach the
student only, microbatches and 8 devices give the one-device update, and `python -m gptjax.train --config
configs/distill.py` makes an ordinary workdir (load, generate, Hugging Face export; another teacher refused)."""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gptjax
from gptjax import model as model_lib
from gptjax.train import distill
from gptjax.train import loop
from gptjax.train import schema
from tests import train_helpers

train_helpers.enable_compilation_cache()
ROOT = pathlib.Path(__file__).resolve().parents[1]
TEACHER_LAYERS = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def teacher(root):
  """A 4-layer teacher trained 40 steps on the shared tiny corpus (char tokenizer): a real gptjax workdir."""
  workdir = root / "teacher"
  loop.train_and_evaluate(train_helpers.tiny_config(root, **{"model.num_layers": TEACHER_LAYERS, "train.steps": 40,
                                                             "train.eval_every": 40, "train.log_every": 10}), workdir)
  return workdir


def _config(root, teacher_dir, **overrides):
  """A distillation run on the teacher's corpus, dropout off so every comparison is exact."""
  settings = {"distill.teacher": str(teacher_dir), "distill.student_layers": (0, 2), "data.tokenizer": "",
              "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0, "opt.lr": 3e-3, "train.steps": 4,
              "train.eval_every": 4, **overrides}
  return train_helpers.tiny_config(root, **settings)


def _objective(root, teacher_dir, workdir, **overrides):
  config = _config(root, teacher_dir, **overrides)
  schema.check(config)
  return distill.Distillation(config, workdir)


def _batch(objective):
  batch = jax.tree.map(jnp.asarray, objective.train_batch(0))
  return batch, objective.normalizer(batch)


def _loss(objective, params, **kwargs):
  batch, normalizer = _batch(objective)
  return objective.loss(params, batch, None, deterministic=True, normalizer=normalizer,
                        frozen=objective.frozen_params, **kwargs)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logits(model_config, params, tokens):
  return np.asarray(model_lib.GPT(model_config).apply({"params": params}, tokens[:, :-1]), np.float64)


def test_a_student_of_every_teacher_layer_is_the_teacher_kd_and_cosine_zero(root, teacher, tmp_path):
  objective = _objective(root, teacher, tmp_path, **{"distill.student_layers": tuple(range(TEACHER_LAYERS)),
                                                     "distill.alpha_cos": 1.0})
  assert objective.model_config == objective.teacher_config
  tokens = np.asarray(objective.train_batch(0)["tokens"])
  np.testing.assert_array_equal(_logits(objective.model_config, objective.initial_params, tokens),
                                _logits(objective.teacher_config, objective.frozen_params, tokens))
  loss, terms = _loss(objective, objective.initial_params)
  assert abs(float(terms["kd_loss"])) < 1e-6 and abs(float(terms["cos_loss"])) < 1e-6
  assert float(terms["lm_loss"]) > 1.0  # The cross-entropy is not 0: only the teacher terms vanish.
  np.testing.assert_allclose(float(loss), 0.5 * float(terms["lm_loss"]), rtol=1e-6)


def test_student_layers_copy_the_named_blocks_with_the_embeddings_and_final_norm(root, teacher, tmp_path):
  objective = _objective(root, teacher, tmp_path, **{"distill.student_layers": (1, 3)})
  student, teacher_params = objective.initial_params, objective.frozen_params
  assert objective.model_config.num_layers == 2 and sorted(student) == ["h_0", "h_1", "ln_f", "wpe", "wte"]
  for new, old in ((0, 1), (1, 3)):
    jax.tree.map(np.testing.assert_array_equal, student[f"h_{new}"], teacher_params[f"h_{old}"])
  for name in ("wte", "wpe", "ln_f"):
    jax.tree.map(np.testing.assert_array_equal, student[name], teacher_params[name])
  assert not np.array_equal(student["h_1"]["mlp"]["c_fc"]["kernel"], teacher_params["h_1"]["mlp"]["c_fc"]["kernel"])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward_kl", "reverse_kl"])
def test_the_kd_term_is_t_squared_times_the_softened_kl(root, teacher, tmp_path, reverse):
  tokens = None
  for temperature in (1.0, 4.0):
    objective = _objective(root, teacher, tmp_path / f"{temperature}", **{
        "distill.temperature": temperature, "distill.alpha_kd": 1.0, "distill.alpha_lm": 0.0,
        "distill.reverse_kl": reverse})
    tokens = np.asarray(objective.train_batch(0)["tokens"])
    log_s = _log_softmax(_logits(objective.model_config, objective.initial_params, tokens) / temperature)
    log_t = _log_softmax(_logits(objective.teacher_config, objective.frozen_params, tokens) / temperature)
    log_p, log_q = (log_s, log_t) if reverse else (log_t, log_s)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean())
    loss, terms = _loss(objective, objective.initial_params)
    assert kl > 1e-4  # Half the teacher's layers: a real difference to scale (small at T = 4: flat).
    np.testing.assert_allclose(float(terms["kd_loss"]), kl, rtol=1e-3)  # float32 against float64.
    np.testing.assert_allclose(float(loss), temperature ** 2 * kl, rtol=1e-3)


def test_gradients_reach_the_student_and_never_the_teacher(root, teacher, tmp_path):
  objective = _objective(root, teacher, tmp_path, **{"distill.alpha_kd": 1.0, "distill.alpha_lm": 0.0,
                                                     "distill.alpha_cos": 1.0})
  batch, normalizer = _batch(objective)

  def loss(params, frozen):
    return objective.loss(params, batch, None, deterministic=True, normalizer=normalizer, frozen=frozen)[0]

  student_grads, teacher_grads = jax.grad(loss, argnums=(0, 1))(objective.initial_params, objective.frozen_params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grads))
  assert float(optax.global_norm(student_grads)) > 1e-4  # The KD and cosine terms alone move the student.


def test_one_device_equals_eight_with_microbatches_and_the_teacher_stays_as_it_was(root, teacher):
  from gptjax import sharding  # pylint: disable=g-import-not-at-top
  before = jax.device_get(gptjax.load(teacher).params)
  one_device = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  settings = {"train.steps": 6, "train.eval_every": 3, "train.batch_size": 16, "eval.batch_size": 8,
              "distill.alpha_cos": 0.5}
  loop.train_and_evaluate(_config(root, teacher, **settings), root / "one", mesh=one_device)
  loop.train_and_evaluate(_config(root, teacher, **settings, **{"train.grad_accum_steps": 2, "mesh.data": 4,
                                                                "mesh.fsdp": 2}), root / "eight")
  one_log, eight_log = (train_helpers.read_metrics(root / name) for name in ("one", "eight"))
  assert [m["step"] for m in one_log] == [m["step"] for m in eight_log] == [1, 2, 3, 4, 5, 6]
  assert one_log[-1]["train_loss"] < one_log[0]["train_loss"]  # It learns: not a comparison of idle runs.
  for key in ("train_loss", "kd_loss", "lm_loss", "cos_loss", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in eight_log], [m[key] for m in one_log], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose([m["val_loss"] for m in eight_log if "val_loss" in m],
                             [m["val_loss"] for m in one_log if "val_loss" in m], rtol=2e-5)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(gptjax.load(teacher).params), before)
  student = gptjax.load(root / "one")
  assert sorted(student.params) == ["h_0", "h_1", "ln_f", "wpe", "wte"]  # The checkpoint holds the student alone.
  assert not np.array_equal(student.params["h_1"]["attn"]["c_attn"]["kernel"],
                            before["h_2"]["attn"]["c_attn"]["kernel"])  # Trained away from its copy.


def test_the_command_line_distils_into_an_ordinary_workdir_and_refuses_another_teacher(root, teacher, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  cache = root / "cache"
  corpus = root / "corpus" / "*.txt"
  env = dict(os.environ, PYTHONPATH=str(ROOT), GPTJAX_COMPILATION_CACHE=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  workdir = tmp_path / "student"
  command = [sys.executable, "-m", "gptjax.train", f"--config={ROOT / 'configs' / 'distill.py'}",
             f"--workdir={workdir}", f"--config.data.source=text:{corpus}", f"--config.data.cache_dir={cache}", "--config.train.steps=3",
             "--config.train.batch_size=8", "--config.train.eval_every=3", "--config.train.log_every=1",
             "--config.eval.batch_size=8", "--config.eval.num_batches=2", "--config.train.tensorboard=False",
             "--config.opt.warmup_steps=1", "--config.distill.student_layers=(1, 3)"]
  run = lambda *flags: subprocess.run(command + list(flags), env=env, capture_output=True, text=True, timeout=600)
  done = run(f"--config.distill.teacher={teacher}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "objective distillation" in done.stderr and "kd_loss " in done.stderr and "val_ppl" in done.stderr

  lm, teacher_lm = gptjax.load(workdir), gptjax.load(teacher)
  assert lm.config.num_layers == 2 and lm.config.emb_dim == teacher_lm.config.emb_dim
  text = "a dog eats mice."  # 16 characters: the tiny context.
  assert lm.tokenizer.encode(text) == teacher_lm.tokenizer.encode(text)  # The teacher's tokenizer, saved as its own.
  out = lm.predict("the cat", max_new_tokens=6)
  assert isinstance(out, str) and len(lm.tokenizer.encode(out)) == 6
  lm.save(tmp_path / "hf")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
  ids = np.asarray([lm.tokenizer.encode(text)])
  with torch.no_grad():
    theirs = reloaded(torch.as_tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, lm.logits(ids), atol=1e-4)

  other = tmp_path / "other_teacher"
  shutil.copytree(teacher, other)
  refused = run(f"--config.distill.teacher={other}", "--config.train.steps=4")
  assert refused.returncode == 2 and f"distill.teacher: '{teacher}' in the checkpoint, '{other}' now" in refused.stderr


def test_bad_student_layers_and_teachers_are_refused_naming_the_value(root, teacher, tmp_path):
  for layers in ((0, 0), (2, 1), (-1, 1), ("0", 1)):
    with pytest.raises(schema.ConfigError, match=r"config.distill.student_layers=.*increasing order without repeats"):
      schema.check(_config(root, teacher, **{"distill.student_layers": layers}))
  with pytest.raises(schema.ConfigError, match=r"student_layers=\(0, 4\): layer 4 is outside the teacher's 4 layers"):
    loop.train_and_evaluate(_config(root, teacher, **{"distill.student_layers": (0, 4)}), tmp_path / "range")
  assert not (tmp_path / "range" / "checkpoints").exists() or not os.listdir(tmp_path / "range" / "checkpoints")
  missing = tmp_path / "no_such_teacher"
  with pytest.raises(FileNotFoundError, match=rf"config.distill.teacher='{missing}' does not exist"):
    loop.train_and_evaluate(_config(root, teacher, **{"distill.teacher": str(missing)}), tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"config.distill.teacher='no-such-owner/no-such-model': .*hub"):
    loop.train_and_evaluate(_config(root, teacher, **{"distill.teacher": "no-such-owner/no-such-model"}),
                            tmp_path / "hub")
  with pytest.raises(schema.ConfigError, match=r"config.data.tokenizer='char' would build a new vocabulary"):
    schema.check(_config(root, teacher, **{"data.tokenizer": "char"}))
  with pytest.raises(schema.ConfigError, match=r"alpha_kd, alpha_lm and alpha_cos are all 0"):
    schema.check(_config(root, teacher, **{"distill.alpha_kd": 0.0, "distill.alpha_lm": 0.0}))
  with pytest.raises(schema.ConfigError, match=r"config.distill.temperature=0.0: must be a number in \(0.0"):
    schema.check(_config(root, teacher, **{"distill.temperature": 0.0}))
  with pytest.raises(schema.ConfigError, match=r"config.distill.student=.*student_layers=\(0, 2\)"):
    schema.check(_config(root, teacher, **{"distill.student.num_layers": 3}))


def test_a_student_from_scratch_of_another_width_distils_from_a_hugging_face_teacher(root, teacher, tmp_path):
  gptjax.load(teacher).save(tmp_path / "hf_teacher")
  config = _config(root, tmp_path / "hf_teacher", **{"distill.student_layers": (), "distill.student.num_layers": 1,
                                                     "distill.student.emb_dim": 16, "distill.student.num_heads": 2})
  with pytest.raises(schema.ConfigError, match=r"alpha_cos=1.0: .* student is 16 wide and the teacher 32"):
    distill.Distillation(_config(root, tmp_path / "hf_teacher", **{
        "distill.student_layers": (), "distill.student.emb_dim": 16, "distill.alpha_cos": 1.0}), tmp_path / "cos")
  result = loop.train_and_evaluate(config, tmp_path / "scratch")
  lm = gptjax.load(tmp_path / "scratch")
  assert (lm.config.num_layers, lm.config.emb_dim, lm.config.mlp_dim) == (1, 16, 64)
  assert np.isfinite(result["val_loss"]) and result["kd_loss"] > 0
