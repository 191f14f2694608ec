"""Check a config node against the keyword parameters of the function that consumes it.

Every group option is a dict of settings handed to one builder function; this module makes sure
the keys exist and the values have the right kind before anything is built, and turns mistakes
into one-line errors that name the key and the fix.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainlab.errors import ConfigError

Entry = TypeVar("Entry")


def to_plain(node: Any) -> Any:
    """Turn an OmegaConf node into plain Python containers (resolving interpolations)."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind_of(annotation: Any, default: Any) -> Any:
    """The expected kind of a parameter: its annotation when it is simple, else its default's type."""
    if annotation is not inspect.Parameter.empty and not isinstance(annotation, str):
        return annotation
    if default is inspect.Parameter.empty or default is None:
        return Any
    if isinstance(default, bool):
        return bool
    if _is_number(default):
        return float
    if isinstance(default, tuple | list):
        return list
    return type(default)


_SIMPLE_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
_PLURAL_NAMES = {float: "numbers", int: "integers", bool: "booleans", str: "strings"}


def _plural(kind: Any) -> str:
    """``numbers`` for float (or a union holding float), and so on."""
    if kind in _PLURAL_NAMES:
        return _PLURAL_NAMES[kind]
    simple = [arg for arg in typing.get_args(kind) if arg in _PLURAL_NAMES]
    return _PLURAL_NAMES[simple[0]] if simple else "values"


def _describe(kind: Any) -> str:
    """Say in words what ``kind`` accepts (for error messages)."""
    origin = typing.get_origin(kind)
    if kind in _SIMPLE_NAMES:
        return _SIMPLE_NAMES[kind]
    if kind in (dict, Mapping) or origin in (dict, Mapping):
        return "a mapping of settings"
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(kind))
    if origin in (list, tuple) or kind in (list, tuple):
        args = [arg for arg in typing.get_args(kind) if arg is not Ellipsis]
        if origin is tuple and len(args) > 1 and len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(args[0])}"
        if args and len(set(args)) == 1:
            return f"a list of {_plural(args[0])}"
        return "a list like [1, 2]"
    if origin in (typing.Union, types.UnionType):
        # Only the kinds a config can hold (torch also accepts tensors for some knobs).
        words = [
            _describe(arg)
            for arg in typing.get_args(kind)
            if arg is not type(None) and (arg in _SIMPLE_NAMES or typing.get_origin(arg))
        ]
        return " or ".join(dict.fromkeys(words)) or "a value"
    return getattr(kind, "__name__", str(kind))


def matches(kind: Any, value: Any) -> bool:
    """Whether ``value`` (plain Python) is acceptable for a parameter of ``kind``."""
    origin = typing.get_origin(kind)
    if kind is Any:
        return True
    if kind is float:
        return _is_number(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(matches(arg, value) for arg in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is list:
        return isinstance(value, list | tuple) and all(
            matches(typing.get_args(kind)[0], item) for item in value
        )
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(args[0], item) for item in value)
        return len(args) == len(value) and all(map(matches, args, value))
    return isinstance(value, kind) if isinstance(kind, type) else True


def check_settings(
    where: str,
    settings: Mapping[str, Any],
    function: Callable[..., Any],
    *,
    supplied: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Check ``settings`` against ``function``'s keyword parameters; return them as plain values.

    ``where`` is the config path shown to the user (e.g. ``loss`` or ``optimizer``); ``supplied``
    names parameters trainlab passes itself (e.g. the model's parameters), which the config must
    not set.
    """
    signature = inspect.signature(function)
    hints: dict[str, Any] = {}
    # A class's __init__ carries its parameter annotations; a dataclass keeps them on the class.
    for owner in (function, function.__init__) if inspect.isclass(function) else (function,):
        with contextlib.suppress(Exception):  # torch may annotate with unresolvable names
            hints.update(typing.get_type_hints(owner))
    parameters = {
        name: parameter
        for name, parameter in signature.parameters.items()
        if name not in supplied
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    plain = {key: to_plain(value) for key, value in settings.items()}
    prefix = f"{where}." if where else ""
    known = ", ".join(parameters) or "none"
    for key in plain:
        if key not in parameters:
            raise ConfigError(f"{prefix}{key} is not a setting here (known settings: {known})")
    for name, parameter in parameters.items():
        if name not in plain:
            if parameter.default is inspect.Parameter.empty:
                raise ConfigError(
                    f"{prefix}{name} is missing (add it back: +{prefix}{name}=<value>)"
                )
            continue
        kind = _kind_of(hints.get(name, inspect.Parameter.empty), parameter.default)
        if not matches(kind, plain[name]):
            raise ConfigError(
                f"{prefix}{name} must be {_describe(kind)}, got {plain[name]!r}"
                f" (set {prefix}{name}=<{_describe(kind)}>)"
            )
        _within_torch_range(f"{prefix}{name}", plain[name])
    return plain


FLOAT32_MAX = 3.4028234663852886e38


def _within_torch_range(key: str, value: Any) -> None:
    """Numbers torch cannot hold fail deep inside it ("cannot be converted to type float
    without overflow"); refuse them by name. Infinities are left to each setting's own check."""
    if isinstance(value, list | tuple):
        for item in value:
            _within_torch_range(key, item)
    elif isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise ConfigError(
            f"{key}={value:g} is too large for torch (float32 holds up to 3.4e38); use a "
            "smaller value"
        )


def require(condition: bool, message: str) -> None:
    """Raise a ConfigError with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def positive(where: str, value: float) -> None:
    require(
        0 < value < math.inf,
        f"{where} must be > 0 and finite, got {value} (set {where}=<a number above 0>)",
    )


def non_negative(where: str, value: float) -> None:
    require(
        0 <= value < math.inf,
        f"{where} must be >= 0 and finite, got {value} (set {where}=<a number, 0 or more>)",
    )


def fraction(where: str, value: float, *, open_right: bool = False) -> None:
    """``value`` must lie in [0, 1] (or [0, 1) with ``open_right``)."""
    upper_ok = value < 1 if open_right else value <= 1
    interval = "[0, 1)" if open_right else "[0, 1]"
    require(
        value >= 0 and upper_ok,
        f"{where} must be in {interval}, got {value} (set {where}=<a number in {interval}>)",
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for the closest choice, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def choose(
    group: str,
    config: Mapping[str, Any],
    registry: Mapping[str, Entry],
    builder: Callable[[Entry], Callable[..., Any]] = lambda entry: entry,  # type: ignore[assignment,return-value]
    *,
    supplied: tuple[str, ...] = (),
    own_keys: tuple[str, ...] = (),
) -> tuple[str, Entry, dict[str, Any]]:
    """The option ``config.name`` of ``group`` in ``registry``, and its settings checked against
    the keyword parameters of its builder: one line with a did-you-mean when either is wrong.

    ``supplied`` names parameters trainlab passes itself; ``own_keys`` are keys of the option
    that are trainlab's, not the builder's (read by the caller).
    """
    name = config.get("name")
    if name not in registry:
        raise ConfigError(
            f"{group}={name}: no such option{did_you_mean(str(name), registry)} "
            f"(options: {', '.join(registry)})"
        )
    entry = registry[name]
    settings = {key: value for key, value in config.items() if key not in ("name", *own_keys)}
    return name, entry, check_settings(group, settings, builder(entry), supplied=supplied)
