"""Fine-tuning end to end through the CLIs: pre-train a tiny GPT-2 on the standard library with `gptjax.train`,
fine-tune it with `configs/finetune_sst2.py` on a real 2-class task built from other standard-library modules
(English comment or code?), resume, predict with `gptjax.predict` (gptjax/predict.py), classify with `gptjax.load`.

Kept apart from finetune_test.py: it takes ~1-1.5 minutes on the shared 2-core machine (mostly XLA compiles in
three subprocesses).
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import tokenize

import pytest

import gptjax
from configs import finetune_sst2
from gptjax import train as gptjax_train

REPO = pathlib.Path(__file__).resolve().parents[1]
PRETRAIN_BYTES = 300_000  # The first ~300 KB of the standard library (builtin:python): the pre-training text.


def _comment_and_code_lines(max_per_class: int) -> list[dict]:
  """A real 2-class task from the standard library: is a line an English comment (its '#' removed) or code?

  Lines come from top-level stdlib modules past the first PRETRAIN_BYTES (sorted by name, roughly the text
  `builtin:python` pre-trains on); modules alternate between the train and validation halves, so no module is in
  both.
  """
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"))
  total, rows = 0, []
  counts = {"train": {"comment": 0, "code": 0}, "val": {"comment": 0, "code": 0}}
  for n, path in enumerate(files):
    total += path.stat().st_size
    if total <= PRETRAIN_BYTES:
      continue
    split = ("train", "val")[n % 2]
    try:
      source = path.read_text(encoding="utf-8")
      tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (UnicodeDecodeError, SyntaxError, tokenize.TokenError):
      continue
    lines, starts, in_string = source.splitlines(), {}, set()
    for tok in tokens:
      if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
        in_string.update(range(tok.start[0] + 1, tok.end[0] + 1))  # Docstring bodies are neither class.
      if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
        starts.setdefault(tok.start[0], []).append(tok)
    for row, line_tokens in starts.items():
      first = line_tokens[0]
      if row in in_string:
        continue
      if len(line_tokens) == 1 and first.type == tokenize.COMMENT:
        text, label = first.string.lstrip("#").strip(), "comment"
        if text.count(" ") < 3 or not text[:1].isalpha():
          continue  # Prose only: no separators, no commented-out code fragments.
      elif first.type == tokenize.NAME and all(t.type != tokenize.COMMENT for t in line_tokens):
        text, label = lines[row - 1].strip(), "code"
        if len(text) < 20:
          continue
      else:
        continue
      if counts[split][label] < max_per_class * (1 if split == "train" else 0.5):
        counts[split][label] += 1
        rows.append({"text": text, "label": label, "split": split})
    if all(c >= max_per_class * (1 if s == "train" else 0.5) for s, cs in counts.items() for c in cs.values()):
      break
  return rows


def _run_cli(args, cwd, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
  return result


@pytest.mark.slow  # Three CLI runs in subprocesses: over a minute on two cores.
def test_fine_tuning_a_pretrained_model_learns_a_real_task_through_the_clis(tmp_path):
  # 1. Pre-train a tiny GPT-2 on the start of the standard library with the trainer's CLI.
  pretrain = tmp_path / "pretrain"
  _run_cli(["gptjax.train", "--config", "configs/tiny.py", "--workdir", str(pretrain),
            "--config.model.vocab_size=512", "--config.model.emb_dim=64", "--config.model.mlp_dim=256",
            "--config.data.tokenizer=bpe:512", f"--config.data.builtin_max_bytes={PRETRAIN_BYTES}",
            f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.steps=150",
            "--config.train.batch_size=16", "--config.train.seq_len=32", "--config.train.grad_accum_steps=1",
            "--config.train.log_every=150", "--config.train.eval_every=150", "--config.train.tensorboard=False",
            "--config.eval.num_batches=2", "--config.opt.lr=3e-3", "--config.opt.warmup_steps=15"], REPO)
  pretrain_log = [json.loads(line) for line in (pretrain / "metrics.jsonl").read_text().splitlines()]
  assert pretrain_log[-1]["val_loss"] < 4.5  # Well below ln(512) = 6.2: it learnt something of Python.

  # 2. The task: comment or code, 400 balanced training lines, 200 validation lines from other modules.
  rows = _comment_and_code_lines(max_per_class=200)
  for split in ("train", "val"):
    with open(tmp_path / f"{split}.jsonl", "w") as f:
      for row in rows:
        if row["split"] == split:
          f.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
  val_labels = [r["label"] for r in rows if r["split"] == "val"]
  assert len(val_labels) == 200 and val_labels.count("comment") == 100

  # 3. Fine-tune from the pre-training run folder with the shipped SST-2 config, pointed at the files.
  work = tmp_path / "finetune"
  overrides = {
      "init_from": str(pretrain), "finetune.train_data": str(tmp_path / "train.jsonl"),
      "finetune.val_data": str(tmp_path / "val.jsonl"), "finetune.text_fields": ("text",),
      "finetune.labels": ("code", "comment"), "finetune.max_length": 32, "opt.lr": 1e-3, "opt.warmup_steps": 7,
      # 3 epochs of 400 examples at batch 16: 25 steps per epoch (one evaluation each), 75 in all.
      "train.batch_size": 16, "train.steps": 75, "train.log_every": 25, "train.tensorboard": False,
      "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0}
  args = ["gptjax.train", "--config", "configs/finetune_sst2.py", "--workdir", str(work)] + [
      f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}"
      for key, value in overrides.items()]
  _run_cli(args, REPO)
  saved = json.loads((work / "best" / "finetune.json").read_text())
  accuracy = saved["validation"]["accuracy"]
  assert accuracy >= 0.8, saved  # Chance is 0.5 on this balanced task.
  log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  val_accuracies = [r["val_accuracy"] for r in log if "val_accuracy" in r]
  assert len(val_accuracies) == 3 and max(val_accuracies) == accuracy  # One evaluation per epoch; best kept.
  assert all(r["lm_loss"] > 0 for r in log)

  # 4. Running again resumes from the checkpoint at the last step and trains no further (in-process: a third
  # subprocess would cost another ~10 s of imports).
  config = finetune_sst2.get_config()
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  again = gptjax_train.train_and_evaluate(config, work)
  assert again["step"] == 75 and again["best_metric"] == accuracy and again["best_step"] == saved["step"]

  # 5. Predict through the CLI; the model the run kept gives the accuracy the run measured.
  predicted = _run_cli(["gptjax.predict", "--model", str(work), "--data", str(tmp_path / "val.jsonl"), "--output",
                        str(tmp_path / "predictions.jsonl")], tmp_path)
  metrics = json.loads(predicted.stderr.split("metrics: ")[-1])
  assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
  predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == 200

  # 6. And in Python: gptjax.load restores the head (a fine-tuning workdir loads its best model); classify agrees
  # with the CLI.
  model = gptjax.load(work)
  texts = [r["text"] for r in rows if r["split"] == "val"][:8]
  assert model.classify(texts) == [p["label"] for p in predictions[:8]]
