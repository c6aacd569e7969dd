"""GPT-1 fine-tuning on RTE (GLUE textual entailment): `start premise delim hypothesis extract`.

Run:  python -m gptjax.train --config configs/finetune_rte.py --workdir /tmp/rte
(GPT-1 reports 56.0% accuracy on RTE; not reproduced here.)
"""

from configs import finetune_sst2


def get_config():
  config = finetune_sst2.get_config()
  config.finetune.task = "entailment"
  config.finetune.train_data = "tfds:glue/rte:train"
  config.finetune.val_data = "tfds:glue/rte:validation"
  config.finetune.text_fields = ("sentence1", "sentence2")  # (premise, hypothesis)
  config.finetune.labels = ("entailment", "not_entailment")
  config.train.steps = 231  # 3 epochs of RTE's 2,490 training examples at batch 32: 77 steps per epoch.
  config.opt.warmup_steps = 1  # 0.2% of the steps, at least one.
  return config
