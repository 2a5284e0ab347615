"""Parameter specs, and the building blocks of the space schema (:mod:`study.schema`).

A model param or training key is written in one of these forms, each value checked by
the parameter's :class:`Rule` (a pydantic type with its bounds):

- a scalar: one fixed value, e.g. ``hidden_dim: 1024``
- a list: a grid (under ``search.type: optuna``: a categorical choice)
- ``{choice: [...]}``: a categorical choice (under grid: every value)
- ``{int: [low, high], log: false}`` / ``{float: [low, high], log: true}``: a range,
  sampled by Optuna

The building blocks: :class:`Section`, the base of every mapping of a space (unknown
keys are errors, reported with the allowed ones), the helpers that word pydantic's
errors in the space's terms (``expect``, ``fail``) and the formatter that turns them
into the space's one-line messages (``format_error``).

Example:
    >>> from study.params import MODEL_PARAM_RULES, spec_type
    >>> from pydantic import TypeAdapter
    >>> TypeAdapter(spec_type(MODEL_PARAM_RULES["latent_dim"])).validate_python([2, 4])
    ParamSpec(kind='grid', values=[2, 4], low=None, high=None, log=False)
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ae4ad.device import DEVICE_PATTERN, DEVICE_RULE

__all__ = [
    "MODEL_PARAM_RULES",
    "NONNEG_INT",
    "POS_INT",
    "ParamSpec",
    "Rule",
    "Section",
    "TRAINING_RULES",
    "custom_error",
    "expect",
    "fail",
    "format_error",
    "number",
    "range_kind",
    "rule_for",
    "spec_type",
    "specs_yaml",
]


# --------------------------------------------------------------------------- errors


def custom_error(
    kind: str, message: str, loc: Sequence, value: Any, ctx: dict | None = None
) -> dict:
    return {
        "type": PydanticCustomError(kind, message, ctx),
        "loc": tuple(loc),
        "input": value,
    }


def fail(loc: Sequence, message: str, value: Any) -> typing.NoReturn:
    """Raise one error at ``loc`` (relative to what is being validated)."""
    raise ValidationError.from_exception_data("space", [custom_error("space", message, loc, value)])


def expect(text: str, nested: bool = False) -> WrapValidator:
    """Word the errors of a value as ``text``; with ``nested``, only the value's own
    errors (a list or mapping whose entries word their errors themselves)."""

    def wrap(value: Any, handler: Callable) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            errors = exc.errors()
            if nested and all(e["loc"] for e in errors):
                raise
            own = [e for e in errors if not (nested and e["loc"])]
            rest = [
                custom_error(e["type"], e["msg"], e["loc"], e["input"], e.get("ctx"))
                for e in errors
                if e not in own
            ]
            line = [custom_error("space", text, (), value)] if own else []
            raise ValidationError.from_exception_data("space", line + rest) from None

    return WrapValidator(wrap)


def _dotted(tokens: Sequence[str | int]) -> str:
    out = ""
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else str(t))
    return out


def _error_line(file: str, error: Mapping[str, Any]) -> str:
    """One pydantic error as ``<file>: <key path>: <what>, got <value>``."""
    where = f"{file}: {_dotted(error['loc'])}" if error["loc"] else file
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "unknown_key":
        close = difflib.get_close_matches(str(error["loc"][-1]), ctx["allowed"], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(ctx["allowed"])
        return f"{where}: unknown key; {hint}"
    if kind == "missing":
        return f"{where}: {error['msg']}"
    return f"{where}: {error['msg']}, got {error['input']!r}"


def format_error(exc: ValidationError, file: str) -> str:
    """The one-line message of a failed validation: its first error, unknown keys first
    (a misspelt key also makes the key it should have been missing)."""
    errors = exc.errors()
    first = min(range(len(errors)), key=lambda i: (errors[i]["type"] != "unknown_key", i))
    return " ".join(_error_line(file, errors[first]).split())


# --------------------------------------------------------------------------- value rules


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


_FLOAT = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]


def number(**bounds: float) -> Any:
    """A finite int or float kept as given (``1`` stays ``1``), within ``bounds``."""
    return (
        Annotated[StrictInt, Field(**bounds)]
        | Annotated[StrictFloat, Field(allow_inf_nan=False, **bounds)]
    )


@dataclass(frozen=True, eq=False)
class Rule:
    """What one parameter value accepts: ``kind`` (int | float | bool | str | any), the
    pydantic type with its bounds, and the expectation ``text`` of error messages."""

    kind: str
    text: str
    type: Any
    fixed_only: bool = False

    @cached_property
    def adapter(self) -> TypeAdapter:
        return TypeAdapter(Annotated[self.type, expect(self.text)])

    def validate(self, value: Any, loc: Sequence = ()) -> Any:
        try:
            return self.adapter.validate_python(value)
        except ValidationError:
            fail(loc, self.text, value)


def _rule(kind: str, text: str, fixed_only: bool = False, **bounds: Any) -> Rule:
    base = {"int": StrictInt, "float": _FLOAT, "bool": StrictBool}[kind]
    return Rule(kind, text, Annotated[base, Field(**bounds)] if bounds else base, fixed_only)


POS_INT = _rule("int", "expected a positive integer", ge=1)
NONNEG_INT = _rule("int", "expected an integer >= 0", ge=0)
_NONNEG = _rule("float", "expected a number >= 0", ge=0)
_POS = _rule("float", "expected a positive number", gt=0)
_BOOL = _rule("bool", "expected true or false")
_INT = _rule("int", "expected an integer")
_NUMBER = _rule("float", "expected a number")
_ANY = Rule(
    "any",
    "expected a number, string, boolean or null",
    StrictBool | StrictInt | StrictFloat | StrictStr | None,
)

# The model params every model of ae4ad may take, in the order grids are expanded.
MODEL_PARAM_RULES: dict[str, Rule] = {
    "latent_dim": POS_INT,
    "hidden_dim": POS_INT,
    "base_width": POS_INT,
    "expansion": POS_INT,
    "encoder_depth": POS_INT,
    "decoder_depth": POS_INT,
    "num_blocks": POS_INT,
    "kl_weight": _NONNEG,
    "mem_size": POS_INT,
    "shrink_threshold": _NONNEG,
    "entropy_weight": _NONNEG,
    "erase_fraction": _rule("float", "expected a number in (0, 1)", gt=0, lt=1),
    "constraint_weight": _NONNEG,
}

# The training keys, in the order grids are expanded.
TRAINING_RULES: dict[str, Rule] = {
    "epochs": POS_INT,
    "batch_size": POS_INT,
    "lr": _POS,
    "weight_decay": _NONNEG,
    "eval_every": POS_INT,
    "score": Rule("str", "expected one of 'l2', 'l1', 'ssim'", Literal["l2", "l1", "ssim"]),
    "device": Rule(
        "str", DEVICE_RULE, Annotated[StrictStr, Field(pattern=DEVICE_PATTERN)], fixed_only=True
    ),
    "bf16": _BOOL,
    "channels_last": _BOOL,
    "deterministic": _BOOL,
    "gpu_memory_fraction": _rule(
        "float", "expected a number in (0, 1] (the share of GPU memory)", True, gt=0, le=1
    ),
}


def rule_for(key: str, default: Any) -> Rule:
    """The value rule of a model param: the known rule, else one from its default's type."""
    if key in MODEL_PARAM_RULES:
        return MODEL_PARAM_RULES[key]
    if isinstance(default, bool):
        return _BOOL
    if isinstance(default, int):
        return _INT
    if isinstance(default, float):
        return _NUMBER
    return _ANY


# --------------------------------------------------------------------------- param specs


@dataclass
class ParamSpec:
    """One parameter's spec: ``kind`` is "fixed" | "grid" | "choice" | "int" | "float".

    ``values`` holds the value(s) for fixed/grid/choice (``[value]`` when fixed);
    ``low``/``high``/``log`` describe a range.

    >>> ParamSpec("grid", [4, 8]).to_yaml()
    [4, 8]
    >>> ParamSpec("float", low=1e-4, high=1e-2, log=True).to_yaml()
    {'float': [0.0001, 0.01], 'log': True}
    """

    kind: str
    values: list = field(default_factory=list)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def max_value(self) -> Any:
        """The largest value this spec can take (for cost estimates)."""
        return self.high if self.is_range else max(self.values)

    def candidates(self) -> list:
        """The values to try when checking the spec: all listed ones, or a range's ends."""
        return [self.low, self.high] if self.is_range else list(self.values)

    def to_yaml(self) -> Any:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "grid":
            return list(self.values)
        if self.kind == "choice":
            return {"choice": list(self.values)}
        return {self.kind: [self.low, self.high], "log": self.log}


def _values(raw: Any, rule: Rule, loc: tuple) -> list:
    if not isinstance(raw, list):
        fail(loc, "expected a list of values", raw)
    if not raw:
        fail(loc, "empty list (give at least one value)", raw)
    values: list = []
    for j, v in enumerate(raw):
        if isinstance(v, (list, dict)):
            fail((*loc, j), "list entries must be single values", v)
        value = rule.validate(v, (*loc, j))
        if any(type(value) is type(w) and value == w for w in values):
            fail((*loc, j), "duplicate value", v)
        values.append(value)
    return values


def _range(raw: dict, kind: str, rule: Rule) -> ParamSpec:
    if kind == "int" and rule.kind not in ("int", "any"):
        fail((), f"takes {rule.kind} values; an int range does not fit", raw)
    if kind == "float" and rule.kind not in ("float", "any"):
        what = "use {int: [low, high]}" if rule.kind == "int" else f"takes {rule.kind} values"
        fail((), f"a float range does not fit ({what})", raw)
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        fail((kind,), "expected [low, high]", bounds)
    bound_rule = rule if rule.kind != "any" else (_INT if kind == "int" else _NUMBER)
    low, high = (bound_rule.validate(b, (kind, j)) for j, b in enumerate(bounds))
    log = raw.get("log", False)
    if low > high:
        fail((kind,), "inverted range (low > high)", bounds)
    if low == high:
        fail((kind,), "empty range (low == high; give a fixed value)", bounds)
    if log and low <= 0:
        fail((kind,), "a log range needs low > 0", bounds)
    return ParamSpec(kind, [], low=low, high=high, log=log)


def range_kind(raw: Any) -> str | None:
    """The kind of range (int or float) that ``raw`` is written as, else None."""
    if not isinstance(raw, dict):
        return None
    kinds = [k for k in ("choice", "int", "float") if k in raw]
    return kinds[0] if kinds in (["int"], ["float"]) else None


def spec_type(rule: Rule) -> Any:
    """The pydantic type of a parameter spec whose values follow ``rule``."""

    def parse(raw: Any) -> ParamSpec:
        if rule.fixed_only and isinstance(raw, (list, dict)):
            fail((), "takes one fixed value (no list or range)", raw)
        if isinstance(raw, list):
            return ParamSpec("grid", _values(raw, rule, ()))
        if not isinstance(raw, dict):
            return ParamSpec("fixed", [rule.validate(raw)])
        _SpecMapping.model_validate(raw)
        kinds = [k for k in ("choice", "int", "float") if k in raw]
        if len(kinds) != 1:
            fail((), "a spec mapping needs exactly one of choice, int, float", raw)
        if kinds[0] != "choice":
            return _range(raw, kinds[0], rule)
        if "log" in raw:
            fail(("log",), "only used with an int or float range", raw["log"])
        return ParamSpec("choice", _values(raw["choice"], rule, ("choice",)))

    return Annotated[ParamSpec, PlainValidator(parse), PlainSerializer(ParamSpec.to_yaml)]


def specs_yaml(specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    return {k: s.to_yaml() for k, s in specs.items()}


# --------------------------------------------------------------------------- sections


class Section(BaseModel):
    """A mapping of the space: unknown keys are errors, named with the allowed ones."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    _expects: ClassVar[str] = "expected a mapping"
    _hidden_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _keys(cls) -> list[str]:
        names = [f.alias or name for name, f in cls.model_fields.items()]
        return [k for k in names if k not in cls._hidden_keys]

    @classmethod
    def _missing(cls, key: str, context: Mapping[str, Any]) -> str:
        field_info = next(f for n, f in cls.model_fields.items() if (f.alias or n) == key)
        return f"missing ({field_info.description})"

    @model_validator(mode="wrap")
    @classmethod
    def _explain_errors(cls, data: Any, handler: Callable, info: ValidationInfo) -> Any:
        """An empty section (``search:``) takes the defaults; the section's own unknown
        and missing keys, and a value that is not a mapping, become the space's wording."""
        try:
            return handler({} if data is None else data)
        except ValidationError as exc:
            errors = []
            for e in exc.errors():
                loc, kind = e["loc"], e["type"]
                if kind == "extra_forbidden" and len(loc) == 1:
                    ctx = {"allowed": cls._keys()}
                    errors.append(custom_error("unknown_key", "unknown key", loc, e["input"], ctx))
                elif kind == "missing" and len(loc) == 1:
                    text = cls._missing(str(loc[0]), info.context or {})
                    errors.append(custom_error("missing", text, loc, None))
                elif kind in ("model_type", "model_attributes_type") and not loc:
                    errors.append(custom_error("space", cls._expects, loc, e["input"]))
                else:
                    errors.append(custom_error(kind, e["msg"], loc, e["input"], e.get("ctx")))
            raise ValidationError.from_exception_data(cls.__name__, errors) from None


class _SpecMapping(Section):
    """The keys of a spec written as a mapping (checked further by ``spec_type``)."""

    choice: Any = None
    int_: Any = Field(None, alias="int")
    float_: Any = Field(None, alias="float")
    log: Annotated[StrictBool, expect("expected true or false")] = False
