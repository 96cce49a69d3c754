"""Sphinx configuration for fnn's documentation site.

Build it with ``sphinx-build -W --keep-going docs docs/_build/html`` (strict: a
warning, such as a broken cross-reference, fails the build).
"""

import fnn

project = "fnn"
author = "the fnn authors"
copyright = "2026, the fnn authors"
release = version = fnn.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

templates_path = ["_templates"]
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every cross-reference must resolve; names from other libraries (read offline,
# so without their inventories) are written as plain code.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(collections|typing|jax|jnp|np|numpy|optax|orbax|tfds|tensorflow_datasets|tqdm|scipy)(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|tuple|list|dict|callable|object|None|Callable|Any|Sequence|Mapping)"),
    # private records a public class holds (Module's _Leaf or _Wiring): named, not documented
    (r"py:class", r"fnn(\.\w+)*\._\w+"),
]

html_theme = "sphinx_book_theme"
html_title = f"fnn {version}"
html_theme_options = {"show_toc_level": 2}


def _defining_comment(name, obj):
    """The ``#:`` comment above the assignment that made ``obj``, in whichever fnn module assigned it."""
    import sys

    from sphinx.pycode import ModuleAnalyzer

    attr = name.rsplit(".", 1)[-1]
    for modname, module in sorted(sys.modules.items()):
        if modname.split(".")[0] != "fnn" or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # a module without source (compiled or built-in)
            continue
        if ("", attr) in docs:
            return list(docs[("", attr)])
    return None


def _document_data_where_defined(app, what, name, obj, options, lines):
    """A re-exported constant or module instance (``fnn.nn.relu``) is documented by its ``#:`` comment, not its type's
    docstring."""
    if what != "data":
        return
    comment = _defining_comment(name, obj)
    if comment is not None:
        lines[:] = comment


def setup(app):
    app.connect("autodoc-process-docstring", _document_data_where_defined)
