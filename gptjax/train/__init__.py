"""Training: one sharded loop (`loop.py`) over objectives (`objectives.py`), one config schema (`schema.py`).

`python -m gptjax.train --config configs/<name>.py --workdir DIR` (`__main__.py`) and `gptjax.fit` call
`train_and_evaluate`. Nothing heavy is imported here, so `--help` stays instant and `jax.distributed` can start
before anything touches the devices.
"""


def train_and_evaluate(config, workdir, **kwargs):
  """`gptjax.train.loop.train_and_evaluate` (see there)."""
  from gptjax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.train_and_evaluate(config, workdir, **kwargs)
