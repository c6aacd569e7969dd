"""experiments/bench_nanogpt.py: its data files in nanoGPT's layout, the one split both tools cut, and gptjax's side
run end to end (nanoGPT's own side needs a checkout of it, which this machine cannot fetch)."""

import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import bench_nanogpt  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("length", [1_115_394, 1_000, 999, 12_345])
def test_the_text_is_cut_where_both_tools_cut_it(length):
  text = bench_nanogpt.same_split_text("ab" * length)[:length]
  text = bench_nanogpt.same_split_text(text)
  n = len(text)
  assert length - 20 < n <= length
  assert int(n * 0.9) == n - int(n * 0.1)  # nanoGPT's prepare.py rule == gptjax's val_fraction rule.


def test_nanogpt_data_files_decode_back_to_the_text(tmp_path):
  text = "To be, or not to be:\nthat is the question.\n" * 30
  bench_nanogpt.write_nanogpt_data(text, tmp_path)
  with open(tmp_path / "meta.pkl", "rb") as f:
    meta = pickle.load(f)
  assert meta["vocab_size"] == len(set(text)) and sorted(meta["stoi"]) == sorted(set(text))
  ids = [np.fromfile(tmp_path / f"{name}.bin", dtype=np.uint16) for name in ("train", "val")]
  assert "".join(meta["itos"][int(i)] for i in np.concatenate(ids)) == text
  assert len(ids[0]) == int(len(text) * 0.9)


@pytest.mark.slow
def test_gptjax_side_runs_and_learns(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(bench_nanogpt.stdlib_text(60_000), "utf-8")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # The trainer's own CPU default, two devices.
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_nanogpt.py"), f"--text={corpus}",
                        "--max_iters=150", f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=str(ROOT)), cwd=ROOT, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  (row,) = [line for line in out.stdout.splitlines() if line.startswith("| gptjax")]
  wall, step_ms, own_val, full = (float(cell.split()[0]) for cell in row.split("|")[2:6])
  assert wall > 0 and step_ms > 0
  vocab = len(set(corpus.read_text()))
  # 150 steps of a character model: well below the uniform guess, ln(vocab) nats.
  assert full < np.log(vocab) - 1.0 and own_val < np.log(vocab) - 1.0, row
