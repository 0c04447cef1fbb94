"""The console's store part is wired into the ``Store`` facade without shadowing anything."""

from __future__ import annotations

import ast
import inspect

from fedcompute.service import store as store_package
from fedcompute.service.store import Store
from fedcompute.service.store.console import Console


def test_facade_names_are_defined_once():
    tree = ast.parse(inspect.getsource(store_package))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Store").body
    names = [t.id for n in body if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_console_method_is_on_the_facade():
    public = [n for n, f in inspect.getmembers(Console, inspect.isfunction)
              if not n.startswith("_")]
    for name in public:
        assert getattr(Store, name).part == "console", name
