"""nanoGPT's classic demo: a 10.7M-parameter character-level GPT on Tiny Shakespeare (TFDS `tiny_shakespeare`).

Run:  python -m gptjax.train --config configs/shakespeare_char.py --workdir /tmp/shakespeare_char

The first run downloads the dataset (~1 MB) through TFDS into ~/tensorflow_datasets (set
--config.data.tfds_data_dir to put it elsewhere) and tokenises it once; later runs work offline. On a machine
without internet, run `tfds build tiny_shakespeare --file_format=array_record` where there is one and copy the
folder over.

Model and recipe are nanoGPT's `config/train_shakespeare_char.py`: 6 layers, 6 heads, width 384, 256 characters
of context, dropout 0.2, batch 64, lr 1e-3 decaying to 1e-4 over 5000 steps, beta2 0.99. nanoGPT reports a
validation loss of 1.4697 after ~3 minutes on one A100. TFDS splits the text differently (1,003,854 train /
55,770 validation characters, against nanoGPT's last 10%), so expect a similar but not identical figure: not
measured here (this machine has no internet to download the data, nor a GPU to run it fast). On a CPU, try
`--config.train.steps=500 --config.model.num_layers=4 --config.model.emb_dim=128 --config.model.mlp_dim=512
--config.model.num_heads=4`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "tfds:tiny_shakespeare"  # Train and validation splits of Karpathy's char-rnn text.
  config.data.tokenizer = "char"  # One id per character (65 of them).

  config.model.vocab_size = 65
  config.model.block_size = 256
  config.model.num_layers = 6
  config.model.num_heads = 6
  config.model.emb_dim = 384
  config.model.mlp_dim = 4 * 384
  config.model.dropout_rate = 0.2  # A 1M-character corpus overfits fast.
  config.model.attention_dropout_rate = 0.2

  config.opt.lr = 1e-3  # Baby networks can afford a high learning rate (nanoGPT).
  config.opt.warmup_steps = 100
  config.opt.min_lr_ratio = 0.1  # Down to 1e-4.
  config.opt.b2 = 0.99  # Few tokens per step: a longer second-moment memory.

  config.train.steps = 5000
  config.train.batch_size = 64
  config.train.grad_accum_steps = 1
  config.train.eval_every = 250
  config.eval.batch_size = 64
  config.eval.num_batches = 0  # The whole validation split (217 windows of 256) at every evaluation.
  return config
