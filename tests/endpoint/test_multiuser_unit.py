"""Multi-user endpoints, unit level: identity mapping, the template's checks and rendering, the
pipe's frames, the starter files. (End to end, as root with real accounts:
test_multiuser.py.)"""

from __future__ import annotations

import json
import os
import pwd
import threading
import uuid
from pathlib import Path

import msgpack
import pytest
import yaml
from click.testing import CliRunner
from fedcompute import serialize
from fedcompute.endpoint.cli import endpoint as endpoint_cli
from fedcompute.endpoint.config import EndpointConfig, IdentityMapping, load_config
from fedcompute.endpoint.engines import get_engine
from fedcompute.endpoint.multiuser import (
    IdentityMappingError,
    UserConfigError,
    UserProcessError,
)
from fedcompute.endpoint.multiuser.identity import IdentityMapper, LocalUser
from fedcompute.endpoint.multiuser.processes import UserProcess, config_key
from fedcompute.endpoint.multiuser.protocol import FrameWriter, read_frames
from fedcompute.endpoint.multiuser.starter import FILES, TEMPLATES, write_starter_files
from fedcompute.endpoint.multiuser.template import (
    MAX_BYTES,
    UserConfigTemplate,
    UserProcessConfig,
    check_values,
)
from fedcompute.endpoint.records import LeasedTask, TaskResult
from pydantic import ValidationError

#: Accounts every Debian system has (not root).
NOBODY = pwd.getpwnam("nobody")
CONTEXT = {"owner": "alice", "user": {"name": "nobody", "uid": NOBODY.pw_uid}, "workdir": "/w",
           "endpoint_dir": "/e"}
SCHEMA = TEMPLATES / FILES["user_config_schema.json"]
TEMPLATE = TEMPLATES / FILES["user_config_template.yaml.j2"]


def mapper(tmp_path: Path, **mapping) -> IdentityMapper:
    return IdentityMapper(IdentityMapping.model_validate(mapping), tmp_path)


def template(tmp_path: Path, text: str, schema: dict | None = None) -> UserConfigTemplate:
    (tmp_path / "t.yaml.j2").write_text(text)
    if schema is not None:
        (tmp_path / "s.json").write_text(json.dumps(schema))
    return UserConfigTemplate(tmp_path / "t.yaml.j2",
                              tmp_path / "s.json" if schema is not None else None)


# --- identity mapping ------------------------------------------------------------------------

def test_table_comes_before_rules_and_rules_fill_in_groups(tmp_path):
    m = mapper(tmp_path, table={"alice": "nobody"},
               rules=[{"match": "alice", "output": "daemon"},
                      {"match": r"(.*)@lab\.example\.org", "output": "{0}"},
                      {"match": r"svc-(?P<who>\w+)", "output": "{who}"},
                      {"match": r"daemon", "output": "{username}"}])
    assert m.map("alice").name == "nobody"
    assert m.map("nobody@lab.example.org").uid == NOBODY.pw_uid
    assert m.map("svc-daemon").name == "daemon"
    assert m.map("daemon").name == "daemon"
    # Rules match the whole name: a prefix or suffix more is no match.
    with pytest.raises(IdentityMappingError, match="no local account"):
        m.map("xnobody@lab.example.org.evil")


def test_unmapped_missing_and_root_accounts_are_refused_as_permission_errors(tmp_path):
    m = mapper(tmp_path, table={"bob": "no-such-account-here", "eve": "root"})
    with pytest.raises(PermissionError, match="'mallory' has no local account"):
        m.map("mallory")
    with pytest.raises(IdentityMappingError, match="'no-such-account-here', which does not"):
        m.map("bob")
    with pytest.raises(IdentityMappingError, match="never runs tasks as root"):
        m.map("eve")


def test_table_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_last(tmp_path):
    table = tmp_path / "ids.yaml"
    table.write_text("alice: nobody\n")
    m = mapper(tmp_path, table_file="ids.yaml")
    assert m.map("alice").name == "nobody"
    table.write_text("alice: daemon\nbob: nobody\n")
    os.utime(table, ns=(1, 10**18))  # a distinct mtime even within the clock's resolution
    assert m.map("alice").name == "daemon" and m.map("bob").name == "nobody"
    table.write_text("alice: [not, a, name]\n")
    os.utime(table, ns=(1, 2 * 10**18))
    assert m.map("alice").name == "daemon"  # the last good table
    (tmp_path / "ids.json").write_text('{"carol": "nobody"}')
    assert mapper(tmp_path, table_file="ids.json").map("carol").name == "nobody"


def test_a_missing_or_broken_table_file_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match="table_file"):
        mapper(tmp_path, table_file="missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="must map service user names"):
        mapper(tmp_path, table_file="bad.yaml")


def test_config_checks_rules_and_requires_a_mapping():
    with pytest.raises(ValidationError, match="has 0 group"):
        EndpointConfig(multi_user=True, identity_mapping={"rules": [{"match": "a"}]})
    with pytest.raises(ValidationError, match="not a regular expression"):
        EndpointConfig(multi_user=True, identity_mapping={"rules": [{"match": "(a"}]})
    with pytest.raises(ValidationError, match="neither a group"):
        EndpointConfig(identity_mapping={"rules": [{"match": "(a)", "output": "{who}"}]})
    with pytest.raises(ValidationError, match="need identity_mapping"):
        EndpointConfig(multi_user=True)
    config = EndpointConfig(multi_user=True, identity_mapping={"table": {"a": "b"}})
    assert config.dask_access is False  # a Dask client could run code as the manager


# --- the template: built-in checks, schema, rendering ------------------------------------------

@pytest.mark.parametrize("value", [
    "acct\n#SBATCH --qos=high", "acct\r", "a\x00b", "a\u2028b", "a\x85b", "\t"])
def test_control_characters_are_refused_whatever_the_schema(tmp_path, value):
    t = template(tmp_path, "engine: {type: local}\n", schema={"type": "object"})
    for config in ({"account": value}, {"extra": [value]}, {"nested": {"k": value}},
                   {"nested": {value: 1}}):
        with pytest.raises(UserConfigError, match="control character"):
            t.render(config, CONTEXT)


def test_the_shipped_schema_refuses_shell_metacharacters(tmp_path):
    t = UserConfigTemplate(TEMPLATE, SCHEMA)
    for value in ("a;rm -rf ~", "$(reboot)", "`id`", "a b", "a|b", "--qos=high"):
        with pytest.raises(UserConfigError, match=r"user_endpoint_config\.account: .* does "
                                                  r"not match .*\[the endpoint's"):
            t.render({"account": value}, CONTEXT)
    with pytest.raises(UserConfigError, match="'shell' was unexpected"):
        t.render({"shell": "x"}, CONTEXT)
    with pytest.raises(UserConfigError, match="workers.*is greater than the maximum of 8"):
        t.render({"workers": 100}, CONTEXT)
    # JSON schema's "$" also matches before a final newline: the built-in check catches it.
    with pytest.raises(UserConfigError, match="control character"):
        t.render({"account": "ok\n"}, CONTEXT)
    assert t.render({"workers": 3}, CONTEXT).engine == {"type": "local", "workers": 3}
    assert t.render(None, CONTEXT).engine == {"type": "local", "workers": 1}


def test_keys_size_and_types_are_checked():
    for bad, message in (([1], "must be a JSON object"), ({"1st": 1}, "not a plain name"),
                         ({"a-b": 1}, "not a plain name"), ({"_fc": {}}, "reserved"),
                         ({"a": "x" * MAX_BYTES}, "bytes as JSON"),
                         ({"a": object()}, "not a JSON value")):
        with pytest.raises(UserConfigError, match=message):
            check_values(bad)
    assert check_values(None) == {}


def test_every_value_stays_one_yaml_value(tmp_path):
    t = template(tmp_path, "engine:\n  type: local\n  workers: 1\n  dashboard_address: "
                           "{{ addr }}\n  resources: {{ res }}\n")
    # YAML syntax inside a value cannot open keys or items: it stays the value.
    tricky = 'x", "type": "slurm", "y": "'
    for value in ("x: y", "{type: slurm}", "- item", "a #c", tricky, "&anchor", "*alias",
                  "!!python/object:os.system", "'q'", "null", "true"):
        config = t.render({"addr": value, "res": {"GPU": 1}}, CONTEXT)
        assert config.engine == {"type": "local", "workers": 1, "dashboard_address": value,
                                 "resources": {"GPU": 1}}


def test_undefined_names_reserved_context_and_filters(tmp_path):
    t = template(tmp_path, "engine:\n  type: local\n  workers: {{ workers }}\n"
                           "task_walltime: {{ hours * 3600 }}\n"
                           "container: {{ {'type': 'podman', 'image': _fc.user.name ~ ':1',"
                           " 'options': ['--env', 'X=' ~ (x | shell_quote)]} }}\n")
    with pytest.raises(UserConfigError, match="'workers' is undefined"):
        t.render({"hours": 1, "x": "1"}, CONTEXT)
    config = t.render({"workers": 2, "hours": 2, "x": "a b'c"}, CONTEXT)
    assert config.task_walltime == 7200
    assert config.container["image"] == "nobody:1"
    assert config.container["options"][1] == "X='a b'\"'\"'c'"


def test_admin_mistakes_are_told_as_such(tmp_path):
    quoted = template(tmp_path, 'engine:\n  type: local\n  queue: "{{ q }}"\n')
    with pytest.raises(UserProcessError, match="write {{ name }} unquoted"):
        quoted.render({"q": "a"}, CONTEXT)
    sandbox = template(tmp_path, "x: {{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(UserProcessError, match="sandbox"):
        sandbox.render({}, CONTEXT)
    extra = template(tmp_path, "engine: {type: local}\nshell: sh\n")
    with pytest.raises(UserConfigError, match="shell: Extra inputs are not permitted"):
        extra.render({}, CONTEXT)
    (tmp_path / "s.json").write_text('{"type": "no-such-type"}')
    broken = UserConfigTemplate(tmp_path / "t.yaml.j2", tmp_path / "s.json")
    with pytest.raises(UserProcessError, match="s.json is broken"):
        broken.check_files()
    with pytest.raises(UserProcessError, match="cannot be read"):
        UserConfigTemplate(tmp_path / "missing.j2", None).check_files()


def test_a_slurm_job_script_gets_the_values_on_their_own_directive_lines(tmp_path):
    """The template's Slurm example, filled from a user config, makes the job script the
    values belong in: each on its #SBATCH line, nothing more."""
    text = TEMPLATE.read_text()
    slurm = text[text.index("engine:\n  type: slurm"):text.rindex("#}")]
    (tmp_path / "t.yaml.j2").write_text(slurm)
    t = UserConfigTemplate(tmp_path / "t.yaml.j2", SCHEMA)
    config = t.render({"account": "proj-42", "partition": "debug", "walltime": "00:10:00",
                       "qos": "low"}, CONTEXT)
    script = get_engine(config.engine, tmp_path).job_script()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH -A proj-42" in directives and "#SBATCH -p debug" in directives
    assert "#SBATCH -t 00:10:00" in directives and "#SBATCH --qos=low" in directives
    # A lax schema would let '--qos=x --exclusive' through, but still on one line only.
    lax = UserConfigTemplate(tmp_path / "t.yaml.j2", None)
    config = lax.render({"account": "p", "qos": "x --exclusive"}, CONTEXT)
    script = get_engine(config.engine, tmp_path).job_script()
    assert "#SBATCH --qos=x --exclusive" in script.splitlines()
    with pytest.raises(UserConfigError, match="control character"):
        lax.render({"account": "p", "qos": "x\n#SBATCH --exclusive"}, CONTEXT)


# --- routing key, frames, starter files --------------------------------------------------------

def test_config_key_is_canonical_and_per_owner():
    assert config_key("a", {"x": 1, "y": [1, 2]}) == config_key("a", {"y": [1, 2], "x": 1})
    assert config_key("a", None) == config_key("a", {})
    assert config_key("a", {"x": 1}) != config_key("b", {"x": 1})
    assert config_key("a", {"x": 1}) != config_key("a", {"x": 2})


def test_frames_carry_bytes_and_end_with_the_stream():
    r, w = os.pipe()
    reader = os.fdopen(r, "rb", buffering=0)
    writer = FrameWriter(os.fdopen(w, "wb", buffering=0))
    big = os.urandom(300_000)  # larger than a pipe's buffer and one read

    def send() -> None:
        writer.write({"op": "tasks", "payload": big, "n": 1})
        writer.write({"op": "stop"})
        writer.close()

    thread = threading.Thread(target=send)
    thread.start()
    frames = list(read_frames(reader))
    thread.join()
    assert frames == [{"op": "tasks", "payload": big, "n": 1}, {"op": "stop"}]
    r, w = os.pipe()
    os.write(w, msgpack.packb([1, 2]) + msgpack.packb({"op": "stop"}))
    os.close(w)  # a frame that is not a dict ends the stream
    assert list(read_frames(os.fdopen(r, "rb", buffering=0))) == []


def test_configure_multi_user_writes_valid_starter_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOMPUTE_HOME", str(tmp_path))
    result = CliRunner().invoke(endpoint_cli, ["configure", "mu", "--multi-user",
                                               "--service-url", "https://fc.example.org"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "endpoints" / "mu"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    config = load_config("mu")
    assert config.multi_user and config.service_url == "https://fc.example.org"
    assert config.identity_mapping is not None and config.idle_timeout == 300
    t = UserConfigTemplate(folder / config.user_config_template,
                           folder / config.user_config_schema)
    assert t.render({"workers": 2}, CONTEXT).engine == {"type": "local", "workers": 2}
    # Edited template and schema are kept when the config is rewritten.
    (folder / "user_config_schema.json").write_text("{}")
    assert [p.name for p in write_starter_files(folder, None, force=False)] == ["config.yaml"]
    assert (folder / "user_config_schema.json").read_text() == "{}"
    assert yaml.safe_load((folder / "config.yaml").read_text())["multi_user"] is True


def test_a_user_process_that_cannot_build_its_engine_fails_its_tasks(tmp_path):
    """The real user process program, run as this test's own account (no switch needed)."""
    me = LocalUser.named(pwd.getpwuid(os.geteuid()).pw_name)
    results: list[TaskResult] = []
    exited = threading.Event()
    start = {"op": "start", "owner": "alice", "workdir": str(tmp_path / "p"), "settings": {},
             "config": {"engine": {"type": "nope"}}}
    proc = UserProcess("k", "alice", me, UserProcessConfig(), tmp_path, start,
                       {"PATH": os.environ.get("PATH", os.defpath)}, results.extend,
                       lambda state, ids: None, lambda p: exited.set())
    proc.start()
    proc.submit([LeasedTask("t1", "f", b"")], {"f": b""})
    assert exited.wait(120)
    assert proc.state == "failed" and [r.task_id for r in results] == ["t1"]
    error = serialize.unpack_exception(results[0].exception)
    assert isinstance(error, UserProcessError)
    assert "did not start: ValueError: unknown engine type 'nope'" in str(error)
    assert "user process did not start" in (tmp_path / "p" / "process.log").read_text()
    with pytest.raises(UserProcessError, match="did not start"):
        proc.submit([LeasedTask("t2", "f", b"")], {"f": b""})  # not left waiting forever


def test_a_user_process_reports_only_its_own_tasks_and_only_well_formed_results(tmp_path):
    """It runs as its user: what it sends is checked before it reaches the service."""
    got: list[TaskResult] = []
    marks: list[tuple[str, list[str]]] = []
    me = LocalUser.named(pwd.getpwuid(os.geteuid()).pw_name)
    proc = UserProcess("k", "alice", me, UserProcessConfig(), tmp_path, {"op": "start"}, {},
                       got.extend, lambda state, ids: marks.append((state, ids)),
                       lambda p: None)
    mine, bad, other = (str(uuid.uuid4()) for _ in range(3))
    proc.submit([LeasedTask(mine, "f", b""), LeasedTask(bad, "f", b"")], {"f": b""})
    proc._frame({"op": "mark", "state": "running", "task_ids": [mine, other, ["x"]]})
    proc._frame({"op": "mark", "state": "cancelled", "task_ids": [mine]})
    proc._frame({"op": "results", "results": [
        {"task_id": other, "status": "success", "result": b"1"},  # someone else's task
        {"task_id": mine, "status": "success", "result": b"2", "timings": {"finished": 1.0}},
        {"task_id": bad, "status": "success", "result": "not bytes"},
        {"task_id": mine, "status": "success", "result": b"again"},  # reported once only
        "junk", {"task_id": ["unhashable"]}]})
    assert marks == [("running", [mine])]
    assert [(r.task_id, r.status) for r in got] == [(mine, "success"), (bad, "failed")]
    assert got[0].result == b"2"
    error = serialize.unpack_exception(got[1].exception)
    assert isinstance(error, UserProcessError) and "malformed result" in str(error)
    assert proc.outstanding() == 0
