"""Typed configuration: every verb's config has a schema (dataclasses), checked as soon as the config is composed.

The YAML files under configs/ hold the defaults and say what each key means; the schema says what each key may hold: its
type, its range or choices, whether it names a path that must exist or one that will be written. `check` merges the composed
config into the schema (a wrong type or an unknown key fails there, with OmegaConf naming the key), then walks it for ranges,
choices and paths, then runs the verb's own cross-key rules. All of it is torch-free and happens before a verb's module is
imported or any output is created, so a bad value costs a second, not a model load, and leaves nothing behind.

Every failure is one line naming the key and the value (`worldpm train: error: trainer.save_every='abc': expected an
integer`). `help_text` lists a verb's keys with their types, defaults and the YAML comments, for `worldpm <verb> --help`.

data_prep registers its own tools' schemas (collect, nested, synthetic); worldpm registers the others (worldpm/config).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, InterpolationResolutionError, MissingMandatoryValue,
                              OmegaConfBaseException, ValidationError)

from data_prep.errors import InputError

PATH_KINDS = ("dir", "file", "exists", "output", "local_or_hub")


def setting(default: Any = MISSING, *, min: float | None = None, max: float | None = None, above: float | None = None,
            below: float | None = None, choices: tuple | None = None, path: str | None = None) -> Any:
    """A schema field with its constraints: `min`/`max` inclusive, `above`/`below` exclusive bounds, `choices`, and `path`:
    dir | file | exists (must exist) | output (a directory that can be created: nothing on its way is a file) |
    local_or_hub (an existing local path, or else a hub id `name` or `org/name`, or an http(s) URL)."""
    if path is not None and path not in PATH_KINDS:
        raise ValueError(f"unknown path kind {path!r}")
    meta = {k: v for k, v in dict(min=min, max=max, above=above, below=below, choices=choices, path=path).items() if v is not None}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested section of a schema (a dataclass field holding another dataclass)."""
    return field(default_factory=cls)


@dataclass(frozen=True)
class Verb:
    schema: type
    check: Callable[[DictConfig], None] | None = None  # the verb's own rules across keys (paths, budgets); torch-free
    variants: dict[str, dict[str, type]] = field(default_factory=dict)  # section -> {its `name`: its schema}


SCHEMAS: dict[str, Verb] = {}


def register(config_name: str, schema: type, check: Callable[[DictConfig], None] | None = None,
             variants: dict[str, dict[str, type]] | None = None) -> None:
    """`variants`: sections whose schema depends on their `name` (collect's `source`: one schema per source)."""
    SCHEMAS[config_name] = Verb(schema, check, dict(variants or {}))


# ---------------------------------------------------------------------------------------------------------------- checking
def check(config_name: str, cfg: DictConfig, error: type[InputError] = InputError) -> DictConfig:
    """The composed `cfg` checked against the verb's schema and rules, returned typed (values converted, e.g. '5' -> 5).
    A config without a registered schema is returned as it is."""
    verb = SCHEMAS.get(config_name)
    if verb is None:
        return cfg
    try:
        typed = OmegaConf.merge(OmegaConf.structured(verb.schema), cfg)
        _walk(typed, verb.schema, "")
        for key, schemas in verb.variants.items():
            name = typed[key].get("name") if isinstance(typed[key], DictConfig) else None
            if name not in schemas:
                raise ConstraintError(f"{key}={name} is not one of {list(schemas)}")
            check_section(typed, key, schemas[name])
        if verb.check is not None:
            verb.check(typed)
    except OmegaConfBaseException as exc:
        raise error(describe(exc, verb.schema)) from None
    except ConstraintError as exc:
        raise error(str(exc)) from None
    return typed


class ConstraintError(Exception):
    pass


def check_section(cfg: DictConfig, key: str, schema: type) -> None:
    """Check the section `key` of a checked config against a schema chosen by the verb's rule (one per source, benchmark...)
    and put its typed form in place."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
    except OmegaConfBaseException as exc:
        full = getattr(exc, "full_key", None)
        if full:
            exc.full_key = f"{key}.{full}"
        raise ConstraintError(describe(exc, _Wrap.of(key, schema))) from None
    _walk(typed, schema, key + ".")
    cfg[key] = typed


class _Wrap:
    """A one-field schema {key: schema}, so errors inside a section name their full key."""

    @staticmethod
    def of(key: str, schema: type) -> type:
        return dataclasses.make_dataclass("Section", [(key, schema, field(default_factory=schema))])


def _fields(schema: type) -> list[tuple[dataclasses.Field, Any]]:
    """A dataclass's fields with their resolved types (the schema modules use `from __future__ import annotations`)."""
    hints = typing.get_type_hints(schema)
    return [(f, hints[f.name]) for f in dataclasses.fields(schema)]


def _walk(node: DictConfig, schema: type, prefix: str) -> None:
    for f, annotation in _fields(schema):
        key = prefix + f.name
        if OmegaConf.is_missing(node, f.name):
            raise ConstraintError(f"{key} is required ({key}=...)")
        value = node[f.name]  # resolves interpolations: a bad one fails here, naming the key
        kind, inner = _shape(annotation)
        if kind == "section" and isinstance(value, DictConfig):
            _walk(value, inner, key + ".")
        elif kind == "list" and isinstance(value, ListConfig):
            for i, item in enumerate(value):
                _walk(item, inner, f"{key}[{i}].")
        elif kind == "dict" and isinstance(value, DictConfig):
            for name, item in value.items():
                _walk(item, inner, f"{key}.{name}.")
        elif value is not None:
            _constrain(key, value, f.metadata)


def _constrain(key: str, value: Any, meta) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConstraintError(f"{key}={value!r} is not one of {list(choices)}")
    if any(k in meta for k in ("min", "max", "above", "below")):
        numbers = list(value) if isinstance(value, (list, ListConfig)) else [value]
        for x in numbers:
            if "min" in meta and x < meta["min"] or "above" in meta and not x > meta["above"]:
                bound = f">= {meta['min']}" if "min" in meta else f"> {meta['above']}"
                raise ConstraintError(f"{key}={value!r} must be {bound}")
            if "max" in meta and x > meta["max"] or "below" in meta and not x < meta["below"]:
                bound = f"<= {meta['max']}" if "max" in meta else f"< {meta['below']}"
                raise ConstraintError(f"{key}={value!r} must be {bound}")
    if "path" in meta:
        check_path(key, value, meta["path"])


def check_path(key: str, value: Any, kind: str) -> None:
    """`value` of `key` is a path of `kind` (see `setting`); one line naming both otherwise."""
    paths = list(value) if isinstance(value, (list, ListConfig)) else [value]
    for raw in paths:
        text = str(raw)
        path = Path(text).expanduser()
        if kind == "output":
            if path.exists() and not path.is_dir():
                raise ConstraintError(f"{key}={text} is a file, not a directory")
            blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                raise ConstraintError(f"{key}={text} cannot be created: {blocker} is a file")
        elif kind == "local_or_hub":
            remote = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) or text.startswith(("http://", "https://"))
            if not path.exists() and (text.startswith((".", "/", "~")) or not remote):
                raise ConstraintError(f"{key}={text} does not exist (neither a local path nor a hub id)")
        elif not path.exists():
            raise ConstraintError(f"{key}={text} does not exist")
        elif kind == "dir" and not path.is_dir():
            raise ConstraintError(f"{key}={text} is not a directory")
        elif kind == "file" and not path.is_file():
            raise ConstraintError(f"{key}={text} is not a file")


def _dataclass_of(annotation) -> type | None:
    """The dataclass a field's type names (through Optional), else None."""
    kind, inner = _shape(annotation)
    return inner if kind == "section" else None


def _shape(annotation) -> tuple[str | None, type | None]:
    """("section", cls) for a dataclass field (through Optional), ("list" | "dict", cls) for a list / dict of dataclasses."""
    plain = _plain(annotation)
    if dataclasses.is_dataclass(plain):
        return "section", plain
    origin, args = typing.get_origin(plain), typing.get_args(plain)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return "list", args[0]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return "dict", args[1]
    return None, None


TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def describe(exc: OmegaConfBaseException, schema: type) -> str:
    """One line for an OmegaConf error raised while checking: the key, the value and what the key takes."""
    key = getattr(exc, "full_key", None) or ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    annotation = _annotation(schema, key) if key else None
    owner = getattr(exc, "object_type", None)
    if key and "." not in key and annotation is None and dataclasses.is_dataclass(owner) and owner is not schema:
        # OmegaConf names a key of a list/dict element by the element's own key only: say where such elements live
        annotation = {f.name: t for f, t in _fields(owner)}.get(key)
        key = f"{_container_path(schema, owner) or '?'}.{key}"
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        return f"{key}: no such setting{_suggestion(key, schema)}"
    if isinstance(exc, MissingMandatoryValue):
        return f"{key} is required ({key}=...)"
    if isinstance(exc, InterpolationResolutionError):
        return f"{key}: {message}"
    if isinstance(exc, ValidationError) and key:
        wanted = TYPE_WORDS.get(_plain(annotation), _type_name(annotation))
        got = re.search(r"Value '(.*?)'", message)
        if got is None and "None" in message:
            return f"{key}=null: a value is required here ({wanted})"
        return f"{key}={got.group(1) if got else '?'!r}: expected {wanted}"
    return f"{key + ': ' if key else ''}{message}"


def _annotation(schema: type, key: str):
    """The declared type of a dotted key (`data.mix[0].path`, `benchmark.rewardbench.max_items`), or None."""
    annotation: Any = schema
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    i = 0
    while i < len(parts) and annotation is not None:
        kind, inner = _shape(annotation)
        if kind is None:
            return None
        if kind == "dict":
            i += 1  # the entry's own name
            if i >= len(parts):
                return inner
        fields = {f.name: t for f, t in _fields(inner)}
        annotation = fields.get(parts[i])
        i += 1
    return annotation


def _container_path(schema: type, inner: type, prefix: str = "") -> str | None:
    """Where a schema holds a list or dict of `inner` sections: `data.mix[*]`, `benchmark.*`."""
    for f, annotation in _fields(schema):
        kind, cls = _shape(annotation)
        if cls is inner and kind in ("list", "dict"):
            return f"{prefix}{f.name}{'[*]' if kind == 'list' else '.*'}"
        if kind == "section":
            found = _container_path(cls, inner, f"{prefix}{f.name}.")
            if found:
                return found
    return None


def _plain(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _type_name(annotation) -> str:
    if annotation is None:
        return "a value"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def _suggestion(key: str, schema: type) -> str:
    known = [k for k, *_ in _leaves(schema, "")]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _leaves(schema: type, prefix: str):
    """(dotted key, field, type) of every leaf of a schema."""
    for f, annotation in _fields(schema):
        kind, inner = _shape(annotation)
        if kind == "section":
            yield from _leaves(inner, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, annotation


def known_keys(config_name: str) -> list[str]:
    """Every key a verb's schema declares (dotted), for suggestions."""
    verb = SCHEMAS.get(config_name)
    return [k for k, *_ in _leaves(verb.schema, "")] if verb else []


# ---------------------------------------------------------------------------------------------------------------- help
def help_text(config_name: str, cfg: DictConfig, config_dir: Path, choices: dict[str, str]) -> str:
    """`worldpm <verb> --help`: the config groups and their options, then every key with its type, default and meaning."""
    verb = SCHEMAS.get(config_name)
    comments = yaml_comments(config_dir / f"{config_name}.yaml")
    for group, choice in choices.items():
        if choice and (config_dir / group / f"{choice}.yaml").exists() and "/" not in group:
            comments.update({f"{group}.{k}": v for k, v in yaml_comments(config_dir / group / f"{choice}.yaml").items()})
    head = re.sub(rf"^(worldpm {config_name}|python -m [\w.]+):\s*", "", comments.get("", ""))
    lines = [f"worldpm {config_name}: {head}" if head else f"worldpm {config_name}", "",
             f"usage: worldpm {config_name} [key=value ...] [group=option ...] [-m]   (Hydra overrides; a wrong type, "
             "range or path fails at once)", ""]
    groups = sorted(p.name for p in config_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "hydra")))
    used = [g for g in groups if g in choices]
    if used:
        lines.append("config groups (group=option):")
        for g in used:
            options = sorted(p.stem for p in (config_dir / g).glob("*.yaml"))
            lines.append(f"  {g:<12} {str(choices.get(g)):<16} options: {', '.join(options)}")
        lines.append("")
    rows = []
    if verb is not None:
        leaves = []
        for key, f, annotation in _leaves(verb.schema, ""):
            variant = verb.variants[key].get(cfg[key].get("name")) if key in verb.variants else None
            leaves += list(_leaves(variant, key + ".")) if variant else [(key, f, annotation)]
        for key, f, annotation in leaves:
            value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value)
            rows.append((key, _describe_type(f, annotation), "???" if _is_missing(cfg, key) else _short(value), comments.get(key, "")))
    width = max((len(r[0]) for r in rows), default=10)
    lines.append(f"  {'key'.ljust(width)}  {'type':<22} {'default':<24} meaning")
    lines += [f"  {k.ljust(width)}  {t:<22} {d:<24} {c}".rstrip() for k, t, d, c in rows]
    return "\n".join(lines)


def _is_missing(cfg: DictConfig, key: str) -> bool:
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    try:
        return isinstance(node, DictConfig) and OmegaConf.is_missing(node, last)
    except OmegaConfBaseException:
        return False


def _describe_type(f: dataclasses.Field, declared) -> str:
    annotation = _plain(declared)
    optional = annotation is not declared
    name = {int: "int", float: "float", bool: "bool", str: "str"}.get(annotation, _type_name(annotation))
    kind, inner = _shape(declared)
    if kind in ("list", "dict"):
        name = f"{kind} of {{{', '.join(x.name for x in dataclasses.fields(inner))}}}"
    meta = f.metadata
    if "choices" in meta:
        name = "|".join(str(c) for c in meta["choices"] if c is not None)
    elif "path" in meta:
        name = f"path ({meta['path']})"
    bounds = []
    for k, sym in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<")):
        if k in meta:
            bounds.append(f"{sym}{meta[k]}")
    if bounds:
        name += " " + ",".join(bounds)
    return name + (" or null" if optional else "")


def _short(value: Any, width: int = 24) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def yaml_comments(path: Path) -> dict[str, str]:
    """{dotted key: its comment} from a YAML file's `key: value  # comment` lines (continuation comment lines aligned under a
    comment are appended); "" maps to the file's first comment line (what the config is)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    stack: list[tuple[int, str]] = []
    last_key, last_col, seen_key = None, None, False
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped:
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if stripped.startswith("#"):
            if not seen_key:  # the file's leading comment: what the config is
                out[""] = (out.get("", "") + " " + stripped.lstrip("#").strip()).strip()
            elif last_key is not None and last_col is not None and raw.find("#") >= last_col - 2:
                out[last_key] = (out[last_key] + " " + stripped.lstrip("#").strip()).strip()
            continue
        seen_key = True
        match = re.match(r"^(\s*)([\w.+-]+):(.*)$", raw)
        if not match or stripped.startswith("- "):
            last_key = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [match.group(2)])
        rest = match.group(3)
        comment_at = _comment_start(rest)
        if comment_at is not None:
            out[key] = rest[comment_at + 1:].strip()
            last_col = len(match.group(1)) + len(match.group(2)) + 1 + comment_at
        else:
            last_col = None
        last_key = key if comment_at is not None else None
        if not rest.split("#")[0].strip():
            stack.append((indent, match.group(2)))
    return out


def _comment_start(text: str) -> int | None:
    """Where a trailing `# comment` starts in a YAML value (not inside quotes), or None."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or text[i - 1] in " \t"):
            return i
    return None


__all__ = ["MISSING", "Optional", "Any", "setting", "section", "register", "check", "check_section", "check_path", "help_text",
           "known_keys", "ConstraintError", "SCHEMAS"]
