"""The ground floor of the params: their pydantic schema and the one formatter of its errors.

Every section of ``params.yaml`` (:mod:`pipeline.config`) and every model's config (:mod:`pipeline.models.configs`)
is a frozen ``@dataclass`` subclassing :class:`Section`, whose schema pydantic v2 validates: scalars are strict
(:data:`Int`, :data:`Float`, :data:`Str`, :data:`Bool`: no ``"15"`` for 15, no ``true`` for 1; an int is accepted
where a float is expected, as YAML writes ``lr: 1``, and loaded as a float), an unknown key is an error, ranges are
``Field(ge=..., lt=...)`` constraints on the fields themselves and cross-field rules are ``model_validator``s beside
their fields. Strictness is per scalar type, not ``ConfigDict(strict=True)``: a strict schema refuses a mapping for a
nested section (``embed.text``), which is how YAML writes one.

Validation runs where a config enters: :func:`from_dict` loads a section from a params file (every key required,
also the ones with a Python default), :func:`check` validates a config built in Python (each model checks its own
when it is built). Building one in Python does not validate, as with any dataclass, so a library function keeps its
own message for a value no params file can hold. ``dataclasses.asdict(config)`` is what checkpoints store, plain
data.

:func:`describe` turns pydantic's ``ValidationError`` into one line: the params file, the dotted key and the fix
(``params.yaml: `train.seed` = -1 must be in [0, 4294967295]``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import annotated_types
from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, ValidationInfo, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

S = TypeVar("S")


class ConfigError(ValueError):
    """A params file (or a config built in Python) does not match the expected schema."""


Int = Annotated[int, Strict()]  # a YAML int; not a bool, not a float, not "15"
Float = Annotated[float, Strict()]  # a YAML float or int (kept as a float); not a bool or a string
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
SEED_MAX = 2**32 - 1  # what numpy, torch and FAISS accept as a seed
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]


@dataclass(frozen=True)
class Section:
    """Base of every params section and model config (a frozen dataclass with a pydantic schema).

    ``SECTION`` is the dotted key it is usually loaded from; :func:`check`'s messages name it."""

    SECTION: ClassVar[str] = ""
    __pydantic_config__ = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _every_key_written(cls, data: Any, info: ValidationInfo) -> Any:
        """From a params file (:func:`from_dict`), every key is written out, also the ones with a default."""
        if not (info.context or {}).get("every_key") or not isinstance(data, dict):
            return data
        names = list(_fields(cls))
        if set(data) <= set(names):  # unknown keys first: pydantic names them
            for name in names:
                if name not in data:
                    raise PydanticCustomError("missing_key", "missing key {key}", {"key": name})
        return data


class Rule(ValueError):
    """A cross-field rule's message; ``{field}`` in it becomes that field's dotted key (``model.num_heads``)."""


# ----------------------------------------------------------------------------------------------------------------
# Loading and checking


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def from_dict(
    cls: type[S],
    raw: Any,
    file: Path | None,
    prefix: str = "",
    keys: Mapping[str, str] | None = None,
    every_key: bool = True,
) -> S:
    """``cls`` from the mapping ``raw`` of a params file; unknown, missing, mistyped or out-of-range keys raise a
    one-line ``ConfigError`` naming ``file`` and the dotted key (``prefix.name``, or ``keys[name]`` where given)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{_file(file)}`{prefix or '<top level>'}` must be a mapping, got {raw!r}")
    try:
        return _adapter(cls).validate_python(raw, context={"every_key": every_key})
    except ValidationError as e:
        raise ConfigError(describe(e, cls, raw, file, prefix, keys)) from None


def check(config: S, prefix: str | None = None, file: Path | None = None) -> S:
    """``config`` (built in Python) validated like a loaded one: the validated copy (ints given for floats become
    floats), or a one-line ``ConfigError`` naming ``prefix.<key>`` (default: the class's ``SECTION``)."""
    cls = type(config)
    raw = dataclasses.asdict(config)  # nested sections as mappings, so that they are validated too
    return from_dict(cls, raw, file, cls.SECTION if prefix is None else prefix, every_key=False)


def check_value(cls: type, name: str, value: Any, file: Path | None, key: str) -> Any:
    """``value`` of ``cls``'s field ``name`` (type and range), validated alone; an error names ``key``."""
    try:
        return TypeAdapter(_fields(cls)[name]).validate_python(value)
    except ValidationError as e:
        first = min(e.errors(), key=_rank)
        error = first | {"loc": (name, *first["loc"])}
        raise ConfigError(f"{_file(file)}{_message(error, cls, {name: value}, {name: key}, '')}") from None


# ----------------------------------------------------------------------------------------------------------------
# The formatter

UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
MISSING = ("missing", "missing_key", "missing_argument")
RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")
RULE = ("value_error", "assertion_error")


def _rank(error: Mapping[str, Any]) -> int:
    kind = error["type"]
    return 0 if kind in UNKNOWN else 1 if kind in MISSING else 3 if kind in RANGE else 4 if kind in RULE else 2


def describe(
    error: ValidationError,
    cls: type,
    raw: Any,
    file: Path | None,
    prefix: str = "",
    keys: Mapping[str, str] | None = None,
) -> str:
    """One line for the first problem (unknown keys, then missing keys, types, ranges, cross-field rules)."""
    first = min(error.errors(), key=_rank)  # min is stable: pydantic lists errors in field order
    display = {name: (keys or {}).get(name) or _join(prefix, name) for name in _fields(cls)}
    return f"{_file(file)}{_message(first, cls, raw, display, prefix)}"


def _message(error: Mapping[str, Any], cls: type, raw: Any, display: Mapping[str, str], prefix: str) -> str:
    kind, loc, value = error["type"], tuple(error["loc"]), error["input"]
    if kind == "missing_key":  # raised by Section for the section at ``loc``: the key is in the context
        kind, loc = "missing", (*loc, error["ctx"]["key"])
    key, tp, meta = _locate(cls, loc, display, prefix)
    if kind in UNKNOWN or kind in MISSING:
        where, parent, _ = _locate(cls, loc[:-1], display, prefix)
        if kind in MISSING:
            return f"missing key `{key}` (add it to the `{where or '<top level>'}` section)"
        allowed = ", ".join(_fields(_strip(parent)) if _is_section(_strip(parent)) else {})
        return f"unknown key `{key}`; allowed keys in `{where or '<top level>'}`: {allowed}"
    if kind in RULE and _is_section(_strip(tp)):  # a model_validator: its message names its fields as {field}
        names = {n: display[n] if not loc else f"{key}.{n}" for n in _fields(_strip(tp))}
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m[1], m[0]), str(error["ctx"]["error"]))
    if kind in RULE:  # a field_validator
        return f"`{key}` = {value!r} {error['ctx']['error']}"
    if kind in RANGE:
        shown = float(value) if _base(tp) is float and isinstance(value, int) else value  # as loaded
        return f"`{key}` = {shown!r} must be {_range_text(meta)}"
    union = _outer_optional(cls, loc, display, prefix)
    if union is not None:  # the value fits no option of `X | None`
        depth, union_key, union_tp = union
        return f"`{union_key}` = {_dig(raw, loc[:depth])!r} must be one of: {_type_name(union_tp)}"
    return _type_message(kind, key or prefix or "<top level>", tp, value, error["msg"])


def _type_message(kind: str, key: str, tp: Any, value: Any, fallback: str) -> str:
    scalar = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}
    if kind == "literal_error":
        return f"`{key}` = {value!r} must be one of {', '.join(repr(a) for a in get_args(_strip(tp)))}"
    if kind == "int_type" and isinstance(value, bool):
        return f"`{key}` must be an int, got {value!r}"
    if kind in scalar:
        return f"`{key}` must be {scalar[kind]}, got {value!r} ({type(value).__name__})"
    if kind == "list_type":
        return f"`{key}` must be a list, got {value!r}"
    if kind in ("dict_type", "dataclass_type", "dataclass_args_type", "model_type"):
        return f"`{key}` must be a mapping, got {value!r}"
    return f"`{key}`: {fallback}"


def _file(file: Path | None) -> str:
    return f"{file}: " if file is not None else ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """``{field: annotation with its constraints}`` of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _optional(tp) is not None:
            tp = _optional(tp)
        else:
            return tp


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1 and len(get_args(tp)) == 2:
            return rest[0]
    return None


def _metadata(tp: Any) -> list[Any]:
    out: list[Any] = []
    while get_origin(tp) is Annotated:
        for m in get_args(tp)[1:]:
            out += m.metadata if isinstance(m, FieldInfo) else [m]
        tp = get_args(tp)[0]
    return out


def _constraints(tp: Any) -> list[Any]:
    """The constraints in ``Annotated[...]`` around ``tp`` and, for ``X | None``, around ``X``."""
    out = _metadata(tp)
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return out + (_metadata(_optional(tp)) if _optional(tp) is not None else [])


def _base(tp: Any) -> Any:
    tp = _strip(tp)
    return get_origin(tp) or tp


def _locate(cls: type, loc: tuple, display: Mapping[str, str], prefix: str) -> tuple[str, Any, list[Any]]:
    """(dotted key, annotation, constraints) of the value at ``loc`` inside ``cls``."""
    key, tp, meta = prefix, cls, []
    for i, part in enumerate(loc):
        inner = _strip(tp)
        if part == "[key]":  # pydantic's marker after a mapping key that failed: handled with the key
            continue
        if get_origin(inner) is dict and loc[i + 1 : i + 2] == ("[key]",):
            key, tp, meta = f"{key} (a key)", get_args(inner)[0], []
        elif _is_section(inner) and isinstance(part, str) and part in _fields(inner):
            key = display.get(part, _join(prefix, part)) if i == 0 else f"{key}.{part}"
            tp, meta = _fields(inner)[part], []
        elif get_origin(inner) in (list, tuple) and isinstance(part, int):
            key, tp = f"{key}[{part}]", get_args(inner)[0]
            meta = []
        elif get_origin(inner) is dict:
            key, tp, meta = f"{key}.{part}", get_args(inner)[1], []
        else:
            key = f"{key}.{part}" if key else str(part)
        meta = meta + _constraints(tp)
    return key, tp, meta


def _outer_optional(cls: type, loc: tuple, display: Mapping[str, str], prefix: str) -> tuple[int, str, Any] | None:
    """(depth, key, annotation) of the outermost ``X | None`` on the way to ``loc`` (its value failed every option)."""
    for depth in range(1, len(loc) + 1):
        key, tp, _ = _locate(cls, loc[:depth], display, prefix)
        bare = tp
        while get_origin(bare) is Annotated:
            bare = get_args(bare)[0]
        if _optional(bare) is not None:
            return depth, key, bare
    return None


def _dig(raw: Any, loc: tuple) -> Any:
    for part in loc:
        raw = raw[part]
    return raw


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Annotated:
        return _type_name(get_args(tp)[0])
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return f"Literal[{', '.join(repr(a) for a in get_args(tp))}]"
    if get_origin(tp) is not None:
        return f"{get_origin(tp).__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _range_text(meta: list[Any]) -> str:
    low = next(((m.ge, "[", ">=") for m in meta if isinstance(m, annotated_types.Ge)), None)
    low = low or next(((m.gt, "(", ">") for m in meta if isinstance(m, annotated_types.Gt)), None)
    high = next(((m.le, "]", "<=") for m in meta if isinstance(m, annotated_types.Le)), None)
    high = high or next(((m.lt, ")", "<") for m in meta if isinstance(m, annotated_types.Lt)), None)
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"{low[2]} {_num(low[0])}"
    if low is None:
        return f"{high[2]} {_num(high[0])}"
    return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of the dataclass ``cls`` (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
