"""Config files by path or by name, from any folder: `--config configs/tiny.py` or `--config gptjax:tiny`.

The configs are the top-level `configs/` of the repository; an installed gptjax ships them as `gptjax.configs`
(setup.py maps the folder), so `gptjax:<name>` works without a checkout. A config file imports its base with
`from configs import default`; here `configs` means the config's own folder when that is a `configs` package (a
copy of ours, edited in place), and gptjax's shipped configs otherwise (a user's `my_run.py` anywhere that imports
`from configs import gpt2_small`). Nothing is put on `sys.path`: the package is registered only while the config
loads and `get_config()` runs, then the previous `configs` module (if any) is put back.

As with ml_collections, anything after the path's first `:` (after the name's, for `gptjax:<name>:<arg>`) is
passed to `get_config(arg)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sys
import uuid

from absl import flags
import ml_collections

PREFIX = "gptjax:"

# Flags defined through this module belong to the caller (the CLI's --help lists them as its own).
flags.disclaim_key_flags()


def configs_dir() -> pathlib.Path:
  """The folder of gptjax's configs: the installed `gptjax.configs`, else a checkout's top-level `configs/`."""
  spec = importlib.util.find_spec("gptjax.configs")
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(list(spec.submodule_search_locations)[0])
  return pathlib.Path(__file__).resolve().parents[1] / "configs"


def names() -> list[str]:
  """The names `gptjax:<name>` accepts."""
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.name.startswith("_"))


def resolve(spec: str | os.PathLike) -> tuple[pathlib.Path, str | None]:
  """`configs/tiny.py[:arg]` or `gptjax:tiny[:arg]` -> (the config file, the argument for get_config or None)."""
  spec = os.fspath(spec)
  if spec.startswith(PREFIX):
    name, sep, arg = spec[len(PREFIX):].partition(":")
    path = configs_dir() / f"{name.removesuffix('.py')}.py"
    if not name or name.startswith("_") or not path.is_file():
      raise FileNotFoundError(f"gptjax ships no config {name!r}: {spec!r} must be one of "
                              f"{', '.join(PREFIX + n for n in names())}")
  else:
    location, sep, arg = spec.partition(":")
    path = pathlib.Path(location).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"config file {location!r} does not exist (from {os.getcwd()}); gptjax's own "
                              f"configs are named {PREFIX}<name>, e.g. {PREFIX}tiny")
  return path.absolute(), (arg if sep else None)


def load(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """The `get_config()` of a config named as `resolve` takes it, importable from any working folder."""
  path, arg = resolve(spec)
  own = path.parent
  package = own if own.name == "configs" and (own / "__init__.py").is_file() else configs_dir()
  with _configs_package(package):
    module_spec = importlib.util.spec_from_file_location(f"_gptjax_config_{path.stem}_{uuid.uuid4().hex[:8]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config() if arg is None else module.get_config(arg)
  if config is None:
    raise ValueError(f"{path}: get_config() returned None (a missing return?)")
  return config


@contextlib.contextmanager
def _configs_package(folder: pathlib.Path):
  """Makes `import configs` (and `configs.<name>`) mean `folder` for the duration of the block."""
  saved = {k: v for k, v in sys.modules.items() if k == "configs" or k.startswith("configs.")}
  current = saved.get("configs")
  locations = [pathlib.Path(p).resolve() for p in getattr(current, "__path__", [])]
  if folder.resolve() in locations:  # Already that package (e.g. imported from a checkout's root): keep it.
    yield
    return
  for k in saved:
    del sys.modules[k]
  try:
    spec = importlib.util.spec_from_file_location("configs", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["configs"] = module
    spec.loader.exec_module(module)
    yield
  finally:
    for k in [k for k in sys.modules if k == "configs" or k.startswith("configs.")]:
      del sys.modules[k]
    sys.modules.update(saved)


class _Parser(flags.ArgumentParser):
  """absl parser of a `--config` value: `load`, then lock (ml_collections' own parser knows only paths)."""

  def __init__(self, lock_config: bool):
    self._lock_config = lock_config

  def parse(self, argument):
    config = load(argument)
    if self._lock_config:
      config.lock()
    return config

  def flag_type(self):
    return "config object"


def DEFINE_config_file(  # pylint: disable=invalid-name  (named as ml_collections' function it wraps)
    name: str, help_string: str = "Config file.", *, lock_config: bool = True,
    flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
  """ml_collections' `config_flags.DEFINE_config_file` (with its `--name.a.b=value` overrides) reading `load`'s specs.

  Args:
    name: The flag's name (no default: a config must be named on the command line).
    help_string: The flag's help.
    lock_config: Lock the ConfigDict, so a misspelt override fails and names the key.
    flag_values: Where the flag is defined.

  Returns:
    The FlagHolder; `.value` is the ConfigDict with the command line's overrides applied.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  help_string = f"{help_string} A path (configs/<name>.py) or {PREFIX}<name> for one shipped with gptjax."
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=lock_config)
  # The flag keeps ml_collections' override handling; only turning the value into a ConfigDict is ours (the
  # command line is parsed after this swap).
  flag_values[name].parser = _Parser(lock_config)
  return holder
