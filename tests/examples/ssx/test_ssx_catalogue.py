"""The SQLite FTS5 catalogue, its access control, and the ``ssx`` CLI that reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from fedcompute_ssx.catalogue import PUBLIC, Catalogue
from fedcompute_ssx.cli import ssx


def _record(title, **extra):
    return {"title": title, "description": f"{title} collected at the beamline",
            "keywords": ["SSX", "serial crystallography"], **extra}


@pytest.fixture
def cat(tmp_path):
    c = Catalogue(tmp_path / "cat.sqlite")
    c.add(_record("lysozyme microcrystals", qa={"hit_rate": 0.31}), owner="alice",
          allowed_users=["bob"], dataset_id="lyso-1")
    c.add(_record("thaumatin batch 7", sample={"buffer": "tartrate"}), owner="carol",
          dataset_id="thau-7")
    c.add(_record("lysozyme public release"), owner="carol", allowed_users=[PUBLIC],
          dataset_id="lyso-pub")
    return c


def test_search_only_returns_readable_datasets(cat):
    ids = lambda user, q="lysozyme": sorted(h["id"] for h in cat.search(q, user=user))  # noqa: E731
    assert ids("alice") == ["lyso-1", "lyso-pub"]
    assert ids("bob") == ["lyso-1", "lyso-pub"]
    assert ids("carol") == ["lyso-pub"]
    assert ids("eve") == ["lyso-pub"]
    assert ids("eve", "thaumatin") == []
    assert ids("carol", "tartrate") == ["thau-7"]  # nested metadata is indexed too
    assert ids("alice", "lyso*") == ["lyso-1", "lyso-pub"]  # prefix search
    assert ids("alice", "microcrystal") == ["lyso-1"]  # porter stemming
    [hit] = cat.search("microcrystals", user="bob")
    assert hit["owner"] == "alice" and "[microcrystals]" in hit["snippet"]


def test_get_enforces_access(cat):
    assert cat.get("lyso-1", user="bob")["record"]["qa"]["hit_rate"] == 0.31
    assert cat.get("lyso-1", user="alice")["allowed_users"] == ["bob"]
    with pytest.raises(PermissionError, match="'eve' may not read dataset 'lyso-1'"):
        cat.get("lyso-1", user="eve")
    with pytest.raises(KeyError):
        cat.get("nope", user="alice")
    assert cat.get("lyso-pub", user="anyone")["owner"] == "carol"
    assert [d["id"] for d in cat.list(user="bob")] == ["lyso-pub", "lyso-1"]


def test_only_the_owner_shares(cat):
    with pytest.raises(PermissionError):
        cat.share("lyso-1", ["eve"], user="bob")
    cat.share("lyso-1", ["eve"], user="alice")
    assert cat.get("lyso-1", user="eve")["id"] == "lyso-1"
    cat.unshare("lyso-1", ["eve"], user="alice")
    with pytest.raises(PermissionError):
        cat.get("lyso-1", user="eve")


def test_queries_with_syntax_characters_are_safe(cat):
    for query in ['lysozyme-"release', "NOT lysozyme", "a:b (c", "*", '"']:
        assert isinstance(cat.search(query, user="alice"), list)
    assert cat.search("   ", user="alice") == []
    assert [h["id"] for h in cat.search("lysozyme NOT public", user="alice", raw=True)] == [
        "lyso-1"]
    with pytest.raises(ValueError, match="bad search query"):
        cat.search('"unbalanced', user="alice", raw=True)
    with pytest.raises(ValueError):
        cat.add(_record("x"), owner=" ")


def test_concurrent_writers(tmp_path):
    path = tmp_path / "cat.sqlite"
    Catalogue(path)

    def add(i):
        return Catalogue(path).add(_record(f"crystal run {i}"), owner="alice")

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(add, range(40)))
    assert len(set(ids)) == 40
    assert len(Catalogue(path).search("crystal", user="alice", limit=100)) == 40


def test_cli_search_show_share(cat):
    runner = CliRunner()
    common = ["--catalogue", cat.path]
    out = runner.invoke(ssx, ["search", "lysozyme", *common, "--user", "bob", "--json"])
    assert out.exit_code == 0, out.output
    assert sorted(h["id"] for h in json.loads(out.output)) == ["lyso-1", "lyso-pub"]
    out = runner.invoke(ssx, ["search", "thaumatin", *common, "--user", "eve"])
    assert out.exit_code == 0 and "thau-7" not in out.output
    out = runner.invoke(ssx, ["show", "thau-7", *common, "--user", "eve"])
    assert out.exit_code == 1 and "may not read dataset 'thau-7'" in out.output
    out = runner.invoke(ssx, ["share", "thau-7", "eve", *common, "--user", "carol"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(ssx, ["show", "thau-7", *common, "--user", "eve"])
    assert out.exit_code == 0 and json.loads(out.output)["owner"] == "carol"
    out = runner.invoke(ssx, ["list", *common, "--user", "eve"])
    assert "thau-7" in out.output and "lyso-1" not in out.output


def test_python_dash_m_entry_point(cat):
    env = {**os.environ, "FEDCOMPUTE_SSX_CATALOGUE": cat.path, "FEDCOMPUTE_SSX_USER": "alice"}
    out = subprocess.run([sys.executable, "-m", "fedcompute_ssx", "search", "microcrystals"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lyso-1  lysozyme microcrystals  (owner alice")
