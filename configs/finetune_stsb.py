"""GPT-1 fine-tuning on STS-B (GLUE semantic similarity, scores 0-5): both orders, states summed, regression.

Run:  python -m gptjax.train --config configs/finetune_stsb.py --workdir /tmp/stsb
(GPT-1 reports 82.0 Pearson on STS-B; not reproduced here.)
"""

from configs import finetune_sst2


def get_config():
  config = finetune_sst2.get_config()
  config.finetune.task = "similarity"
  config.finetune.train_data = "tfds:glue/stsb:train"
  config.finetune.val_data = "tfds:glue/stsb:validation"
  config.finetune.text_fields = ("sentence1", "sentence2")
  config.finetune.labels = ()
  config.finetune.regression = True  # The similarity score itself, squared error.
  config.finetune.metric = "pearson"
  config.train.steps = 537  # 3 epochs of STS-B's 5,749 training examples at batch 32: 179 steps per epoch.
  config.opt.warmup_steps = 1  # 0.2% of the steps, at least one.
  return config
