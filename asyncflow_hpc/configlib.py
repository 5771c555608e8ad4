"""Typed configuration machinery: YAML + `a.b=value` overrides -> nested kw_only dataclasses.

Each component owns its `Config` dataclass beside its code (torchtitan style); this module only
knows how to build any such dataclass from plain data and how to report a bad key or value as one
line naming the key and the file. Field help lives in `field(metadata={"help": ...})` via `opt()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from asyncflow_hpc.errors import ConfigError

MISSING = dataclasses.MISSING


def opt(default: Any = MISSING, help: str = "", *, factory: Any = MISSING) -> Any:
    """A dataclass field with a help string (shown by `config show --help-keys`)."""
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def section(cls: type) -> Any:
    """A nested config section, default-constructed."""
    return dataclasses.field(default_factory=cls, metadata={"help": (cls.__doc__ or "").strip()})


class Source:
    """Where a value came from, for error messages: a file, or the command line."""

    def __init__(self, file: str | None):
        self.file = file

    def where(self, key: str) -> str:
        origin = self.file if self.file else "<command line>"
        return f"{origin}: {key}" if key else origin


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str, src: Source) -> Any:
    """Check `value` against annotation `tp` and return it converted (int -> float allowed)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, src)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{src.where(key)}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{src.where(key)}: must be one of {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{src.where(key)}: expected a mapping (section {tp.__name__}), got {value!r}")
        return build(tp, value, src, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src.where(key)}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(item_tp, v, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src.where(key)}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _coerce(val_tp, v, f"{key}.{k}", src) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{src.where(key)}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{src.where(key)}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{src.where(key)}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{src.where(key)}: expected a string, got {value!r}")
    raise ConfigError(f"{src.where(key)}: unsupported config type {tp!r}")


def build(cls: type, data: dict[str, Any], src: Source, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys suggest the nearest valid key."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{(prefix + '.' if prefix else '') + close[0]}'?" if close else (
                f"; valid keys here: {', '.join(sorted(fields))}")
            raise ConfigError(f"{src.where(key)}: unknown key{hint}")
        kwargs[name] = _coerce(hints[name], value, key, src)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        # __post_init__ checks raise ConfigError("field: message"); prefix the section and file.
        key = getattr(exc, "key", None)
        raise ConfigError(src.where(f"{prefix}.{exc}" if prefix else str(exc)),
                          key=f"{prefix}.{key}" if key and prefix else key) from None
    except TypeError as exc:
        raise ConfigError(f"{src.where(prefix)}: {exc}") from None


def fail(field_name: str, message: str) -> ConfigError:
    """For `__post_init__`: `raise fail('batch_size', 'must be positive, got 0')`."""
    return ConfigError(f"{field_name}: {message}", key=field_name)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"<command line>: {dotted}: '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML scalar/list)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"<command line>: override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"<command line>: override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"<command line>: {key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def _refuse_duplicate_keys(node: Any) -> None:
    """Walk a composed YAML node tree (nodes only: nothing is constructed) and raise on a key repeated in one
    mapping (PyYAML silently keeps the last one). `<<: *anchor` merge entries may be overridden, as YAML intends."""
    import yaml

    todo = [node]
    while todo:
        cur = todo.pop()
        if isinstance(cur, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in cur.value:
                todo.append(value_node)
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                first = seen.setdefault(key_node.value, line)
                if first != line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first at line {first}); keep one of them",
                        key_node.start_mark)
        elif isinstance(cur, yaml.SequenceNode):
            todo.extend(cur.value)


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        data = yaml.safe_load(text)
        if data is not None:
            _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (UTF-8 decode failed)") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; give it at least one section (see configs/), or "
                          f"leave the file out to use the built-in defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain data (for printing, traces and pickling across ranks)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """One line per leaf key: `key (type, default): help`."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(help_lines(tp, key + "."))
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else "required")
        out.append(f"{key} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}")
    return out


__all__ = ["opt", "section", "build", "fail", "Source", "set_dotted", "parse_override", "load_yaml",
           "to_dict", "help_lines"]
