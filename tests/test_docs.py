"""The documentation: every code block of the guides and the README runs, every public name has a reference entry,
and the site builds with no warning."""

import doctest
import importlib
import os
import re
import shutil
import subprocess
import sys
import types

import jax
import pytest
from conftest import ROOT, SHARED
from test_surface import PUBLIC

DOCS = ROOT / "docs"
GUIDES = sorted((DOCS / "guides").glob("*.md"))
#: Namespaces whose ``__all__`` the reference covers: every public one (``fnn.nn.initializers`` and the op sets are
#: public modules inside them).
NAMESPACES = sorted({*PUBLIC, "fnn.nn.initializers"})


def python_blocks(path):
    """The fenced ``python`` code blocks of the Markdown file ``path``, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def run_blocks(path):
    """Runs ``path``'s Python blocks in order in one namespace, as a user pasting them would; returns the namespace."""
    namespace = {"__name__": f"docs_{path.stem}"}
    with jax.enable_x64(False):  # as a user runs them: the test suite turns float64 on
        for block in python_blocks(path):
            exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_every_guide_has_code_and_is_in_the_index():
    index = (DOCS / "index.md").read_text()
    assert len(GUIDES) >= 8
    for guide in GUIDES:
        assert f"guides/{guide.stem}\n" in index, f"{guide.name} is not in docs/index.md's table of contents"
        assert python_blocks(guide) or guide.stem == "design", f"{guide.name} has no runnable example"


@pytest.fixture
def offline_mnist(mnist, monkeypatch):
    """``fnn.data.load("mnist")`` with no arguments finds the test run's prepared MNIST, as a user's set-up would."""
    _, data_dir, _ = mnist
    monkeypatch.setenv("FNN_DATASETS_DIR", str(SHARED))
    monkeypatch.setenv("TFDS_DATA_DIR", str(data_dir))


#: What each guide's code prints, as its prose and comments say (a guide whose claim goes stale fails here).
PRINTS = {
    "data": [r"^2000 True$"],
    "images_and_sequences": [r"custom vs autodiff: max \|difference\| \d\.\de-(0[6-9]|[1-9]\d)"],
    "modes": [r"^True$"],
    "modules": [
        r"check_module\(softsign, input \(4, 5\), seed 0, products at precision highest\): 11 FAILED",
        r"backward +FAILED",
        r"scale\(init_value=0\.5\)",
        r"serial\[1\] residual serial\[1\] softsign",
    ],
    "paths": [r"top-level HLO ops, custom minus autodiff: fusion:kLoop -1", r"custom: \d\.\d\dx autodiff"],
    "state": [r"pass state=model\.init_state\(input_shape\)"],
    "training": [
        r"train labels must be class ids in \[0, 3\)",
        r"epoch 3: test error",
        r"^2$",
        r"^32768\.0$",
        r"^1024\.0 False 1024\.0$",
        r"^\[0\]\['w'\] \(784, 500\) \('data', 'model'\)$",
    ],
}


@pytest.mark.parametrize("guide", [g for g in GUIDES if g.stem != "getting_started"], ids=lambda g: g.stem)
def test_the_guides_code_runs_and_prints_what_they_say(guide, capsys):
    run_blocks(guide)
    printed = capsys.readouterr().out
    for expected in PRINTS.get(guide.stem, []):
        assert re.search(expected, printed, flags=re.M), f"{guide.name} no longer prints {expected!r}:\n{printed}"


def test_getting_started_trains_on_mnist_and_the_paths_agree(offline_mnist, capsys):
    namespace = run_blocks(DOCS / "guides" / "getting_started.md")
    printed = capsys.readouterr().out
    assert namespace["history"].test_err[-1] < 0.05, printed  # two epochs of the notes' recipe
    gaps = [float(m) for m in re.findall(r"largest difference (\S+)", printed)]
    assert len(gaps) == 2 and max(gaps) < 1e-5, printed


def test_the_readme_examples_run(offline_mnist, capsys):
    namespace = run_blocks(ROOT / "README.md")
    printed = capsys.readouterr().out
    gap = float(re.search(r"backprop against autodiff: (\S+)", printed).group(1))
    assert gap < 1e-5 and namespace["history"].test_err[-1] < 0.1, printed  # float32 rounding; one epoch learns
    assert printed.splitlines()[-1] == "passed"  # the checker's edge values, as the README says


# ---------------------------------------------------------------- the API reference
def reference_entries():
    """``{page: [qualified name, ...]}``: what each API page documents (autosummary entries under its
    ``currentmodule``)."""
    entries = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        text, names, module = page.read_text(), [], None
        for line in text.splitlines():
            if m := re.match(r"\.\. currentmodule:: (\S+)", line):
                module = m.group(1)
            elif module and (m := re.match(r"   ([A-Za-z_][\w.]*)$", line)):
                names.append(f"{module}.{m.group(1)}")
        entries[page] = names
    return entries


def _resolve(qualified):
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_public_name_has_an_entry_in_the_api_reference():
    entries = reference_entries()
    documented = {name for names in entries.values() for name in names}
    documented_objects = {id(_resolve(name)) for name in documented}
    pages = {page: page.read_text() for page in entries}
    missing = []
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        page = next((p for p, text in pages.items() if f".. automodule:: {namespace}\n" in text), None)
        assert page is not None, f"{namespace} has no page in docs/api/"
        for name in module.__all__:
            value = getattr(module, name)
            qualified = f"{namespace}.{name}"
            if name == "__version__" or qualified in documented:
                continue
            if isinstance(value, types.ModuleType) and value.__name__ in NAMESPACES:
                continue  # a namespace of its own, with its own page
            if id(value) in documented_objects and f"`{namespace}.{name}`" in pages[page]:
                continue  # documented under another name, which this namespace's page names
            missing.append(qualified)
    assert not missing, f"public names with no entry in docs/api/: {missing}"


def test_the_coverage_check_sees_a_missing_name(monkeypatch):
    monkeypatch.setattr(fnn_nn := importlib.import_module("fnn.nn"), "__all__", [*fnn_nn.__all__, "undocumented"])
    monkeypatch.setattr(fnn_nn, "undocumented", lambda: None, raising=False)
    with pytest.raises(AssertionError, match=r"fnn\.nn\.undocumented"):
        test_every_public_name_has_an_entry_in_the_api_reference()


def test_the_examples_in_the_docstrings_run():
    """Every ``>>>`` example in the docstring of a public name runs and prints what it shows."""
    finder, seen, tests = doctest.DocTestFinder(recurse=False), set(), []
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            value = getattr(module, name)
            if id(value) in seen or isinstance(value, types.ModuleType):
                continue
            seen.add(id(value))
            tests += [t for t in finder.find(value, f"{namespace}.{name}") if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    with jax.enable_x64(False):
        for test in tests:
            runner.run(test)
    assert len(tests) >= 6 and runner.summarize(verbose=False).failed == 0


def sphinx(tmp_path, builder):
    """Builds the site with ``builder`` into ``tmp_path / builder``, strict (``-W``): the finished process."""
    source = shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("_build", "generated"))
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder, "-d", tmp_path / "doctrees",
         source, tmp_path / builder],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip


def test_the_site_reads_with_no_warning(tmp_path):
    """Every page read and every reference resolved, strict, without writing the pages (a quarter of the time)."""
    build = sphinx(tmp_path, "dummy")
    assert build.returncode == 0, build.stderr[-5000:]


@pytest.mark.slow  # about 30 s: writes every page with the theme
def test_the_site_builds_with_no_warning(tmp_path):
    build = sphinx(tmp_path, "html")
    assert build.returncode == 0, build.stderr[-5000:]
    for page in ["index", "api/index", "results", *(f"guides/{g.stem}" for g in GUIDES)]:
        assert (tmp_path / "html" / f"{page}.html").exists(), page


def test_the_design_guides_layer_table_names_every_file_there_is():
    """Every file of fnn has a row of its own (``fnn/_errors.py``) or is named in its package's row (``_stream`` in
    ``fnn/data/``'s), and every file the table names exists."""
    rows = {}
    for line in (DOCS / "guides" / "design.md").read_text().splitlines():
        if match := re.match(r"\| `(fnn/[\w/.]+)` \| (.*) \|$", line):
            rows[match.group(1)] = match.group(2)
    package_root = ROOT / "fnn"
    for path in sorted(package_root.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and path.parent != package_root:
            assert f"{path.parent.relative_to(ROOT).as_posix()}/" in rows, relative
        elif path.parent == package_root:
            assert path.name == "__init__.py" or relative in rows, f"{relative} has no row"
        else:
            row = rows.get(f"{path.parent.relative_to(ROOT).as_posix()}/", "")
            assert f"`{path.stem}`" in row, f"{relative}: not named in its package's row"
    for named in rows:
        assert (ROOT / named).exists(), f"the table names {named}, which does not exist"
