"""GPT-1 (Radford et al. 2018; 116,534,784 parameters): 12 post-LN layers, width 768, 512 context, 40478-token BPE.

Run:  python -m gptjax.train --config configs/gpt1.py --workdir /tmp/gpt1
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.vocab_size = 40478  # GPT-1's BPE (lower-cased, `</w>` word ends).
  config.model.block_size = 512
  config.model.norm = "post"  # LayerNorm after each residual sum.
  config.model.final_norm = False  # No ln_f.
  config.model.scale_residual_init = False  # Plain N(0, 0.02) everywhere.
  return config
