"""GPT-2 xl (1,557,611,200 parameters): 48 layers, 25 heads, width 1600, 1024 context, 50257-token BPE.

Run:  python -m gptjax.train --config configs/gpt2_xl.py --workdir /tmp/gpt2_xl
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.num_layers = 48  # GPT-2 paper, Table 2.
  config.model.num_heads = 25  # Head dimension 64.
  config.model.emb_dim = 1600
  config.model.mlp_dim = 4 * 1600
  return config
