"""The results page's figures: drawn from the committed results, each one shown on the page."""

import re

import pytest
from conftest import ROOT

from experiments import _cli, figures

PAGE = ROOT / "docs" / "results.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_drawn_and_on_the_results_page(tmp_path):
    written = figures.main(["--out", str(tmp_path)])
    shown = set(re.findall(r"_static/figures/([\w.-]+\.png)", PAGE.read_text()))
    assert shown == set(figures.FIGURES), "docs/results.md and figures.FIGURES name different figures"
    assert {path.name for path in written} == shown
    for name in shown:
        png = (tmp_path / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000, name


def test_a_missing_results_file_is_one_line_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        _cli.run(figures.main, ["--results", str(tmp_path), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot read the results file") and error.count("\n") == 1, error
    assert "mnist_two_layer.json" in error
