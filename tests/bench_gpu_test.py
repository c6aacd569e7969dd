"""experiments/bench_gpu.py runs end to end and prints every row of its table: on a CPU with its small shape (MFU
and the decoding bound n/a), and on a GPU (marked `gpu`: bfloat16 with cuDNN attention, MFU and the bound given)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROWS = ["row", "train, remat off, batch 4 x 64", "train, remat on , batch 4 x 64", "train, remat on , batch 8 x 64",
        "decode, batch 1, greedy, 8 tokens", "server, saturated"]


def _bench(**env_overrides):
  """Runs `bench_gpu.py --small` with conftest's CPU settings removed; returns (stdout, the table's rows)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(PYTHONPATH=str(ROOT), **env_overrides)
  out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_gpu.py"), "--small", "--steps=2",
                        "--decode_tokens=8"], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
  assert [row.split("|")[1].strip() for row in rows] == ROWS, out.stdout
  for row in rows[1:5]:
    assert "failed" not in row, out.stdout
    assert float(row.split("|")[2].replace(",", "")) > 0, row
  # An untrained tiny model's loss is near ln(256) = 5.55.
  losses = [float(row.split("loss ")[1].split()[0]) for row in rows[1:4]]
  assert all(4.5 < loss < 6.5 for loss in losses), losses
  return out.stdout, rows


@pytest.mark.slow
def test_bench_gpu_runs_small_on_a_cpu_and_prints_its_table():
  # One CPU device (not conftest's fake eight), as on a machine without an accelerator.
  _, rows = _bench(JAX_PLATFORMS="cpu")
  for row in rows[1:5]:
    assert "n/a" in row  # No MFU or bandwidth bound on a CPU.


@pytest.mark.gpu
def test_bench_gpu_on_a_gpu_trains_in_bfloat16_with_cudnn_attention_and_states_mfu():
  stdout, rows = _bench()
  assert "training compute bfloat16, attention cudnn" in stdout, stdout
  for row in rows[1:4]:
    mfu = row.split("|")[3].strip()
    assert mfu.endswith("% MFU") and 0 < float(mfu.split("%")[0]) < 100, row
    assert "peak " in row and " GiB" in row, row  # The device's allocator reports its high-water mark.
  assert rows[4].split("|")[3].strip().endswith("% of bound"), rows[4]
