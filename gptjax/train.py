r"""Trains a GPT: `python -m gptjax.train --config configs/<name>.py --workdir DIR [--config.a.b=value ...]`.

The config is locked: `--config.train.stpes=10` fails and names the key. Running again with the same `--workdir`
resumes from its latest checkpoint. Multi-process runs start one copy per process, each with
`--coordinator_address=host:port --num_processes=N --process_id=i` (or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); only process 0 writes logs.

Example (the main job, offline on a laptop CPU in a few minutes):

  python -m gptjax.train --config configs/quickstart.py --workdir /tmp/quickstart
"""

import logging as py_logging

from absl import app
from absl import flags
from absl import logging

from gptjax import config_files

# `configs/<name>.py` from any folder, or `gptjax:<name>` (gptjax/config_files.py); overrides as ml_collections'.
_CONFIG = config_files.DEFINE_config_file("config", "Training config file (a Python get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, logs, tokenizer. Reused = resumed.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(py_logging.Filter):
  """Drops orbax's per-save INFO lines (dozens per checkpoint), keeping its warnings and errors."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # Imported here so that --help is instant and jax.distributed starts before anything touches the devices.
  from gptjax import sharding  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax  # pylint: disable=g-import-not-at-top
  from gptjax import trainer  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # One console for the whole job.
  logging.info("Config:\n%s", _CONFIG.value)
  if "finetune" in _CONFIG.value:  # configs/finetune_*.py: GPT-1 task fine-tuning (gptjax/finetune.py).
    from gptjax import finetune  # pylint: disable=g-import-not-at-top
    result = finetune.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info("Done: %s", result)


if __name__ == "__main__":
  app.run(main)
