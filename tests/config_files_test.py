"""Configs load from any working folder, by path or as `gptjax:<name>`, without touching sys.path."""

import os
import pathlib
import subprocess
import sys

import pytest

from gptjax import config_files

ROOT = pathlib.Path(__file__).parents[1]


def test_every_shipped_name_loads():
  names = config_files.names()
  assert {"default", "tiny", "gpt2_small", "gpt2_xl", "finetune_sst2", "finetune_rte"} <= set(names)
  assert "__init__" not in names
  for name in names:
    config = config_files.load(f"gptjax:{name}")
    assert "train" in config or "finetune" in config, name
  assert config_files.load("gptjax:gpt2_medium").model.num_layers == 24  # gpt2_medium imports gpt2_small.


def test_unknown_name_and_missing_file_say_what_exists(tmp_path):
  with pytest.raises(FileNotFoundError, match="gptjax ships no config 'nope'.*gptjax:tiny"):
    config_files.load("gptjax:nope")
  with pytest.raises(FileNotFoundError, match="missing.py.*does not exist"):
    config_files.load(tmp_path / "missing.py")


def test_argument_after_colon_reaches_get_config(tmp_path):
  (tmp_path / "sized.py").write_text(
      "from configs import tiny\n\ndef get_config(width='64'):\n"
      "  config = tiny.get_config()\n  config.model.emb_dim = int(width)\n  return config\n")
  assert config_files.load(tmp_path / "sized.py").model.emb_dim == 64
  assert config_files.load(f"{tmp_path / 'sized.py'}:48").model.emb_dim == 48


def test_a_copied_configs_folder_imports_its_own_base(tmp_path):
  # A user's copy of configs/ with an edited default: `from configs import default` means the copy.
  copy = tmp_path / "configs"
  copy.mkdir()
  (copy / "__init__.py").write_text("")
  default = (ROOT / "configs" / "default.py").read_text()
  (copy / "default.py").write_text(default.replace("config.model.num_layers = 12", "config.model.num_layers = 7"))
  (copy / "tiny.py").write_text((ROOT / "configs" / "tiny.py").read_text())
  before = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "configs"}
  assert config_files.load(copy / "default.py").model.num_layers == 7
  # tiny sets num_layers itself; the copied tiny still builds on the copied default.
  assert config_files.load(copy / "tiny.py").model.num_layers == 2
  assert config_files.load("gptjax:default").model.num_layers == 12  # Ours again, not the copy.
  after = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "configs"}
  assert after == before, "load() must leave sys.modules['configs'] as it found it"


def test_loads_from_another_folder_without_the_checkout_on_sys_path(tmp_path):
  # Only the gptjax package is importable (through a link), as for an installed gptjax: `import configs` fails.
  site = tmp_path / "site"
  site.mkdir()
  (site / "gptjax").symlink_to(ROOT / "gptjax", target_is_directory=True)
  (tmp_path / "my_run.py").write_text(
      "from configs import gpt2_small\n\ndef get_config():\n"
      "  config = gpt2_small.get_config()\n  config.train.steps = 7\n  return config\n")
  code = ("import importlib.util, sys\n"
          "assert importlib.util.find_spec('configs') is None, sys.path\n"
          "from gptjax import config_files\n"
          f"print(config_files.load('gptjax:gpt2_large').model.num_layers)\n"
          f"print(config_files.load('my_run.py').train.steps)\n"
          f"print(config_files.load({str(ROOT / 'configs' / 'finetune_rte.py')!r}).finetune.task)\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["36", "7", "entailment"]


def test_train_cli_runs_a_named_config_from_another_folder(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "gptjax").symlink_to(ROOT / "gptjax", target_is_directory=True)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env["PYTHONPATH"] = str(site)
  command = [sys.executable, "-m", "gptjax.train", "--config", "gptjax:tiny", "--workdir", "run",
             "--config.train.steps=2", "--config.train.eval_every=2", "--config.opt.warmup_steps=1",
             "--config.data.builtin_max_bytes=100000", f"--config.data.cache_dir={tmp_path / 'tokens'}"]
  misspelt = subprocess.run(command + ["--config.train.stpes=3"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, check=False)
  assert misspelt.returncode != 0 and "stpes" in misspelt.stderr
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert "step 2/2" in result.stderr and (tmp_path / "run" / "metrics.jsonl").is_file()
