"""GPT-1-style multiple choice on COPA (SuperGLUE): `start premise question delim answer_i extract` per answer.

super_glue needs TensorFlow to be prepared by TFDS; without it, export COPA to JSONL with fields premise, question,
choice1, choice2, label and point train_data/val_data at the files.

Run:  python -m gptjax.train --config configs/finetune_copa.py --workdir /tmp/copa
"""

from configs import finetune_sst2


def get_config():
  config = finetune_sst2.get_config()
  config.finetune.task = "multiple_choice"
  config.finetune.train_data = "tfds:super_glue/copa:train"
  config.finetune.val_data = "tfds:super_glue/copa:validation"
  config.finetune.text_fields = ("premise", "question")  # The context: joined with a space.
  config.finetune.choice_fields = ("choice1", "choice2")
  config.finetune.labels = ()  # The label is the right answer's index.
  config.train.batch_size = 8  # COPA has 400 training examples.
  config.train.steps = 500  # 10 epochs of COPA's 400 training examples at batch 8: 50 steps per epoch.
  config.opt.warmup_steps = 1  # 0.2% of the steps, at least one.
  return config
