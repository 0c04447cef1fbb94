"""A user process's config: the admin's Jinja template filled from ``user_endpoint_config``.

What a submitter sends is checked three times before it becomes part of a config:

1. **Built-in checks**, whatever the admin's schema says: a JSON object of at most
   ``MAX_BYTES``, top-level keys that are plain names (not ``_fc``, the reserved context), and
   no control characters or line breaks in any key or string, so that no value can add a
   line to a batch script (``#SBATCH ...``) or a shell prologue.
2. **The admin's JSON schema** (``user_config_schema.json``), e.g. patterns that keep ``;`` and
   ``$(...)`` out of an account name.
3. **Rendering in Jinja's sandbox** with every ``{{ ... }}`` written as a quoted YAML scalar
   (JSON), so a value is always one value: it can never open a new key or list item. An
   undefined variable is an error, not an empty string.

The rendered YAML must be a user process config (``engine``, ``container``, ``task_walltime``)
whose engine can be built. Context: ``_fc.owner`` (service user), ``_fc.user`` (local
account: ``name``, ``uid``, ``gid``, ``groups``, ``home``), ``_fc.workdir`` (its private
folder), ``_fc.endpoint_dir``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserConfigError, UserProcessError

#: Largest user_endpoint_config accepted (as JSON).
MAX_BYTES = 16 * 1024
RESERVED = "_fc"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# C0/C1 controls, DEL, and what YAML or Unicode treat as line breaks (NEL, LS, PS).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UserProcessConfig(BaseModel):
    """What a rendered template may say: the user process's engine and task settings."""

    model_config = ConfigDict(extra="forbid")

    engine: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    container: dict[str, Any] | None = None
    task_walltime: float | None = Field(None, gt=0)


def check_values(user_config: Any) -> dict[str, Any]:
    """The built-in checks (1. above); returns the config as a dict."""
    if user_config is None:
        return {}
    if not isinstance(user_config, dict):
        raise UserConfigError("user_endpoint_config must be a JSON object (a dict), got "
                              f"{type(user_config).__name__}")
    size = len(json.dumps(user_config, default=str))
    if size > MAX_BYTES:
        raise UserConfigError(f"user_endpoint_config is {size} bytes as JSON; this endpoint "
                              f"takes at most {MAX_BYTES}")
    for key in user_config:
        if not isinstance(key, str) or not _NAME.match(key):
            raise UserConfigError(f"user_endpoint_config key {key!r} is not a plain name "
                                  "(letters, digits, _; not starting with a digit)")
        if key == RESERVED:
            raise UserConfigError(f"user_endpoint_config key {RESERVED!r} is reserved")
    _check_strings(user_config, "user_endpoint_config")
    return user_config


def _check_strings(value: Any, where: str) -> None:
    if isinstance(value, str):
        bad = _CONTROL.search(value)
        if bad:
            raise UserConfigError(
                f"{where}: {value!r} contains the control character {bad.group()!r} "
                "(newlines and other control characters are refused: a value cannot add "
                "lines to a batch script)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UserConfigError(f"{where}: key {key!r} is not a string")
            _check_strings(key, f"{where} key")
            _check_strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, bool | int | float)):
        raise UserConfigError(f"{where}: {type(value).__name__} is not a JSON value")


def yaml_scalar(value: Any) -> str:
    """How every ``{{ ... }}`` is written: one YAML value (JSON is YAML's flow style)."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises with the variable's name
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _shell_quote(value: Any) -> str:
    """``{{ x | shell_quote }}``: one shell word, for templates that build a command line."""
    return shlex.quote(str(value))


class UserConfigTemplate:
    """The admin's template and schema files (reread when they change)."""

    def __init__(self, template: Path, schema: Path | None):
        self.template_path = Path(template)
        self.schema_path = Path(schema) if schema else None
        self._cache: dict[Path, tuple[tuple[int, int], Any]] = {}
        self.env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, finalize=yaml_scalar,
                                        autoescape=False, keep_trailing_newline=True,
                                        loader=jinja2.FileSystemLoader(
                                            str(self.template_path.parent)))
        self.env.filters["shell_quote"] = _shell_quote

    def check_files(self) -> None:
        """Fail now (at the endpoint's start) if the template or schema cannot be used."""
        self._template()
        self._schema()

    def _load(self, path: Path, parse: Any) -> Any:
        try:
            st = path.stat()
        except OSError as exc:
            raise UserProcessError(f"the endpoint's {path.name} cannot be read ({exc}); tell "
                                   "the endpoint's administrator") from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            value = parse(path.read_text())
        except Exception as exc:  # noqa: BLE001 - any parse error is the admin's to fix
            raise UserProcessError(f"the endpoint's {path} is broken ({exc}); tell the "
                                   "endpoint's administrator") from None
        self._cache[path] = (stamp, value)
        return value

    def _template(self) -> jinja2.Template:
        return self._load(self.template_path, self.env.from_string)

    def _schema(self) -> Any:
        if self.schema_path is None:
            return None
        from jsonschema.validators import validator_for

        def parse(text: str) -> Any:
            schema = json.loads(text)
            cls = validator_for(schema)
            cls.check_schema(schema)
            return cls(schema, format_checker=cls.FORMAT_CHECKER)

        return self._load(self.schema_path, parse)

    def validate(self, user_config: Any) -> dict[str, Any]:
        """Checks 1 and 2; returns the user config as a dict."""
        values = check_values(user_config)
        validator = self._schema()
        if validator is not None:
            from jsonschema.exceptions import best_match

            error = best_match(validator.iter_errors(values))
            if error is not None:
                where = "user_endpoint_config" + "".join(
                    f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
                hint = error.schema.get("description") if isinstance(error.schema, dict) \
                    else None
                raise UserConfigError(f"{where}: {error.message}"
                                      + (f" ({hint})" if hint else "")
                                      + " [the endpoint's user_config_schema]")
        return values

    def render(self, user_config: Any, context: dict[str, Any]) -> UserProcessConfig:
        """Check, fill in and parse: the user process's config."""
        values = self.validate(user_config)
        template = self._template()
        try:
            text = template.render({**values, RESERVED: context})
        except jinja2.UndefinedError as exc:
            raise UserConfigError(
                f"the endpoint's template needs a value the task's user_endpoint_config does "
                f"not give: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise UserProcessError(f"the endpoint's template did something its sandbox "
                                   f"refuses: {exc}; tell the endpoint's administrator") from None
        except jinja2.TemplateError as exc:
            raise UserProcessError(f"the endpoint's template failed: {exc}; tell the "
                                   "endpoint's administrator") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserProcessError(
                f"the endpoint's template did not render to valid YAML ({exc}); values are "
                "inserted as quoted YAML scalars: write {{ name }} unquoted, and build strings "
                "inside the braces ({{ hours ~ ':00:00' }}); tell the endpoint's "
                "administrator") from None
        if not isinstance(data, dict):
            raise UserProcessError("the endpoint's template must render to a YAML mapping")
        try:
            return UserProcessConfig.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserConfigError(f"rendered user process config: {where}: "
                                  f"{first['msg']}") from None


__all__ = ["MAX_BYTES", "UserConfigTemplate", "UserProcessConfig", "check_values",
           "yaml_scalar"]
