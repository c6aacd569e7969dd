"""experiments/bench_gpu.py runs end to end on a CPU with its small shape and prints every row of its table."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_gpu_runs_small_and_prints_its_table():
  # One CPU device (not conftest's fake eight), as on a machine without an accelerator.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_gpu.py"), "--small", "--steps=2",
                        "--decode_tokens=8"], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
  names = [row.split("|")[1].strip() for row in rows]
  assert names == ["row", "train, remat off, batch 4 x 64", "train, remat on , batch 4 x 64",
                   "train, remat on , batch 8 x 64", "decode, batch 1, greedy, 8 tokens", "server, saturated"]
  for row in rows[1:5]:
    assert "failed" not in row, out.stdout
    assert float(row.split("|")[2].replace(",", "")) > 0, row
    assert "n/a" in row  # No MFU or bandwidth bound on a CPU.
  # An untrained tiny model's loss is near ln(256) = 5.55.
  losses = [float(row.split("loss ")[1].split()[0]) for row in rows[1:4]]
  assert all(4.5 < loss < 6.5 for loss in losses), losses
