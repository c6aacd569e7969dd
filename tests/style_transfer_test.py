"""experiments/style_transfer.py: its data keep the splits and the pre-training text apart, and (slow) the whole
experiment runs end to end at a small size."""

import pathlib
import os
import subprocess
import sys
import sysconfig

import pytest

from gptjax import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import style_transfer  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_no_module_in_two_splits_and_none_from_the_pre_training_text():
  splits = style_transfer.build_examples({"train": 300, "val": 40, "test": 40})
  assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 40, "test": 40}
  modules = {k: {e["where"].rsplit(":", 1)[0] for e in v} for k, v in splits.items()}  # Paths in the stdlib.
  assert not modules["train"] & modules["val"] and not modules["train"] & modules["test"]
  assert not modules["val"] & modules["test"]
  # The pre-training text, as the trainer reads it: no example's module is in it, not even in part.
  corpus = data.load_corpus("builtin:python", builtin_max_bytes=style_transfer.PRETRAIN_BYTES)
  pretraining_text = "".join(corpus.train) + "".join(corpus.val)
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  for path in set().union(*modules.values()):
    head = (root / path).read_text(encoding="utf-8")[:300]
    assert head not in pretraining_text, path
  for example in splits["train"]:
    assert example["target"].startswith(" ") and "\n" not in example["target"]
    assert '"""' not in example["source"] and len(example["source"].splitlines()) <= style_transfer.SOURCE_LINES
    assert example["target"].strip() not in example["source"]  # The docstring itself is gone from the source.


@pytest.mark.slow
def test_the_experiment_runs_end_to_end_at_a_small_size(tmp_path):
  out = subprocess.run([sys.executable, str(REPO / "experiments" / "style_transfer.py"), f"--workdir={tmp_path}",
                        "--pretrain_steps=12", "--finetune_steps=12", "--train_examples=64", "--test_examples=16"],
                       capture_output=True, text=True, cwd=REPO,
                       env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})  # One device, as a user's.
  assert out.returncode == 0, out.stderr[-3000:]
  table = out.stdout.split("model and decoding", 1)[1]
  for row in ("pre-trained, zero-shot, greedy", "fine-tuned, greedy", "fine-tuned, beam 4", "peer: always"):
    assert row in table
  assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in out.stdout
