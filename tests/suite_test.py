"""The suite's own layout: every library module has its test file, `tests/<module>_test.py`, or is named (as
`gptjax/<path>.py`) in the docstring of the test file that covers it, so that a reader finds a module's tests."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _docstrings() -> dict[str, str]:
  return {p.name: ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
          for p in sorted((ROOT / "tests").glob("*_test.py"))}


def test_every_module_has_a_test_file_or_is_named_by_the_one_that_covers_it():
  docstrings = _docstrings()
  uncovered = []
  for path in sorted((ROOT / "gptjax").rglob("*.py")):
    relative = path.relative_to(ROOT).as_posix()
    if path.name == "__init__.py" or f"{path.stem}_test.py" in docstrings:
      continue
    # A docstring may list several modules of one folder: `gptjax/serve/__main__.py, app.py, plans.py`.
    folder, name = relative.rsplit("/", 1)
    listed = re.compile(rf"{re.escape(folder)}/([\w.]+\.py, )*{re.escape(name)}\b")
    if not any(listed.search(" ".join(doc.split())) for doc in docstrings.values()):
      uncovered.append(relative)
  assert not uncovered, f"no tests/<module>_test.py and no test docstring names {uncovered}"
