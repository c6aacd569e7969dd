"""The `gptjax` command (gptjax/cli.py, gptjax/__main__.py): subcommands dispatch to `python -m gptjax.<module>`,
each --help listing its own flags."""

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from gptjax import cli

ROOT = pathlib.Path(__file__).parents[1]


def _gptjax(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-m", "gptjax", *args], env=env, capture_output=True, text=True,
                        check=False)


def test_usage_lists_every_command():
  result = _gptjax("--help")
  assert result.returncode == 0
  for command in ("train", "sample", "evaluate", "predict", "serve", "lm_eval"):
    assert f"\n  {command} " in result.stdout
  assert _gptjax().returncode == 2
  unknown = _gptjax("trian")
  assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


@pytest.mark.parametrize("command, expected_flags", [
    ("train", ["--config", "gptjax:<name>", "--workdir"]),
    ("sample", ["--model", "--start", "--temperature"]),
    ("evaluate", ["--model", "--task", "--data"]),
    ("predict", ["--model", "--data", "--output"]),
    ("serve", ["--model"]),
    ("lm_eval", ["run", "ls"]),  # lm-evaluation-harness's own command line, with the gptjax model registered.
])
def test_each_command_help_lists_its_flags(command, expected_flags):
  result = _gptjax(command, "--help")
  module = cli.COMMANDS[command][0]
  if importlib.util.find_spec(module) is None:  # The server is another part of the tree; until it lands:
    assert result.returncode == 2 and f"needs the module {module}" in result.stderr
    return
  assert result.returncode in (0, 1), result.stderr  # absl's --help exits 1, as `python -m <module> --help` does.
  for flag in expected_flags:
    assert flag in result.stdout, f"gptjax {command} --help does not list {flag}:\n{result.stdout}"


def test_flags_reach_the_command():
  result = _gptjax("sample", "--model", "/nonexistent/model")
  assert result.returncode != 0 and "/nonexistent/model" in result.stdout + result.stderr


def test_console_script_entry_point_is_cli_main():
  tree = ast.parse((ROOT / "setup.py").read_text())
  calls = [n for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "entry_points"]
  (entry_points,) = [ast.literal_eval(k.value) for k in calls]
  assert "gptjax = gptjax.cli:main" in entry_points["console_scripts"]
