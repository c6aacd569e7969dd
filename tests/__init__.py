"""gptjax's tests: one `<module>_test.py` per library module, shared helpers imported as `from tests import ...`.

A package, so that helpers (`tests.assets`, `tests.tiny_lm`, `tests.train_helpers`, `tests.serve_helpers`) have one
name whether pytest, a subprocess or an experiments/ script imports them; fixtures live in `tests/conftest.py`.
"""
