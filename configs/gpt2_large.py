"""GPT-2 large (774,030,080 parameters): 36 layers, 20 heads, width 1280, 1024 context, 50257-token BPE.

Run:  python -m gptjax.train --config configs/gpt2_large.py --workdir /tmp/gpt2_large
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.num_layers = 36  # GPT-2 paper, Table 2.
  config.model.num_heads = 20  # Head dimension 64.
  config.model.emb_dim = 1280
  config.model.mlp_dim = 4 * 1280
  return config
