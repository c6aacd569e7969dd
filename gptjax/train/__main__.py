r"""Trains a GPT: `python -m gptjax.train --config configs/<name>.py --workdir DIR [--config.a.b=value ...]`.

The config is locked: `--config.train.stpes=10` fails and names the key. Pre-training and GPT-1 fine-tuning
(`configs/finetune_*.py`) are objectives of one loop (`gptjax/train/loop.py`). Running again with the same
`--workdir` resumes from its latest checkpoint; SIGTERM or Ctrl-C finishes the step in flight, saves and exits 0.
Multi-process runs start one copy per process, each with `--coordinator_address=host:port --num_processes=N
--process_id=i` (or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); only
process 0 writes logs. A mistake is one `error: ...` line (exit 2); `--traceback` shows the full trace.

Example (the main job, offline on a laptop CPU in a few minutes):

  python -m gptjax.train --config configs/quickstart.py --workdir /tmp/quickstart
"""

import shlex
import sys

from absl import flags
from absl import logging

from gptjax import config_files
from gptjax import console

# `configs/<name>.py` from any folder, or `gptjax:<name>` (gptjax/config_files.py); overrides as ml_collections'.
_CONFIG = config_files.DEFINE_config_file("config", "Training config file (a Python get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, tokenizer. Reused = resumed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help is instant and jax.distributed starts before anything touches the devices.
  from gptjax import compilation_cache, sharding  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top
  from gptjax.train import loop, schema  # pylint: disable=g-import-not-at-top
  schema.check(_CONFIG.value)  # A bad value is one error line, before the config dump.
  loop.split_cpu_cores(_CONFIG.value)  # Before the first JAX operation (jax.process_index below is one).
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # One console for the whole job.
  logging.info("Config:\n%s", _CONFIG.value)
  result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "stopped_by" in result:
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "gptjax.train"] + sys.argv[1:])
    print(f"Stopped by {result['stopped_by']} at step {result['step']}; the checkpoint is saved. Resume with:\n  "
          f"{command}", file=sys.stderr, flush=True)
    return
  logging.info("Done: %s", result)


if __name__ == "__main__":
  console.run(main)
