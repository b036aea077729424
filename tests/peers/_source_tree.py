"""Loading an author's module from a fetched source tree (a path in an environment variable), for the comparisons
of ``tests/peers/authors_*.py``: those files are not collected by ``make test`` (their names do not start with
``test_``) and run by ``make peer-tests`` with the tree's path set; the project never copies a peer's code in."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path


def source_root(variable: str, repository: str) -> Path:
    """The root of the source tree named by ``variable``; a clear error when it is not set or not a tree."""
    value = os.environ.get(variable)
    if not value:
        raise RuntimeError(
            f"set {variable} to the root of a {repository} source tree, e.g. "
            f"git clone https://github.com/{repository} /tmp/src && make peer-tests {variable}=/tmp/src"
        )
    root = Path(value)
    if not root.is_dir():
        raise RuntimeError(f"{variable}={value} is not a directory")
    return root


def load(path: Path, name: str, stubs: dict[str, dict] | None = None) -> types.ModuleType:
    """Execute the file ``path`` as the module ``name`` (registered in ``sys.modules``); ``stubs``: modules to provide
    (name -> attributes) for imports the file makes that the comparison does not need, unless already importable."""
    for stub, attrs in (stubs or {}).items():
        if stub in sys.modules:
            continue
        try:
            importlib.import_module(stub)
            continue
        except ImportError:
            pass
        parts = stub.split(".")
        for k in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:k]), types.ModuleType(".".join(parts[:k])))
        for key, value in attrs.items():
            setattr(sys.modules[stub], key, value)
    if not path.is_file():
        raise RuntimeError(f"{path} not found: is the variable the root of the right source tree?")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
