"""The README's Python examples run as written, in order, in one namespace."""

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    """The README's fenced ``python`` code blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 3


def test_readme_examples_run(capsys):
    namespace = {}
    with jax.enable_x64(False):  # as a user runs them: the test suite turns float64 on
        for block in python_blocks():
            exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    # The conv net's three paths agree to float32 rounding.
    gaps = [float(m) for m in re.findall(r"max \|difference\| (\S+)", printed)]
    assert len(gaps) == 2 and max(gaps) < 1e-5, printed
    assert namespace["loss"].shape == ()
