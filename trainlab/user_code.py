"""A user's own model and loss, named in a config option by ``_target_`` (Hydra's convention):
``model=custom model._target_=my_models.WideNet model.width=128``.

Mistakes in the config (a ``_target_`` that cannot be imported, a setting the target does not
take) are one line each, checked before anything runs. An error raised inside the user's code
keeps its traceback: it is the user's bug to read, not trainlab's to hide.

What a target receives:

- a model: its settings as keyword arguments, plus those of ``input_shape`` (one example's shape;
  one item's for ranking), ``output_size`` (numbers per example: the class count, 1 for
  regression and for ranking scores), ``task`` and ``num_classes`` that its signature names (all
  of them when it takes ``**kwargs``). It must return a ``torch.nn.Module``.
- a loss: a function ``(outputs, targets, **settings) -> scalar tensor``, or a class built with
  the settings whose instances are called with ``(outputs, targets)``. The tasks it fits are the
  option's ``tasks`` list, or the target's ``tasks`` attribute; with neither it is trusted on any
  task, with a warning.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from trainlab.data.base import DatasetSpec
from trainlab.errors import ConfigError
from trainlab.settings import check_settings, did_you_mean, to_plain

log = logging.getLogger("trainlab")
OWN_KEYS = ("name", "_target_", "tasks")  # trainlab's keys in a user part's option
SHAPE_KEYS = ("input_shape", "output_size", "task", "num_classes")


def is_user_part(config: Mapping[str, Any]) -> bool:
    """Whether a group option names a user's code (``_target_``) rather than a built-in."""
    return "_target_" in config


def locate(target: Any, group: str) -> Any:
    """The object a dotted path names, importing the longest module prefix that exists; a
    module or name that is not there is one line."""
    if not isinstance(target, str) or "." not in target or "" in target.split("."):
        raise ConfigError(
            f"{group}._target_ must be module.name (e.g. my_models.WideNet), got {target!r}"
        )
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (module_name + ".").startswith(error.name + "."):
                continue  # this prefix is not a module: try a shorter one
            raise  # the user's module imports something missing: their traceback
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                names = [name for name in dir(found) if not name.startswith("_")]
                raise ConfigError(
                    f"{group}._target_={target}: {module_name} has no "
                    f"{attribute!r}{did_you_mean(attribute, names)}"
                )
            found = getattr(found, attribute)
        return found
    raise ConfigError(
        f"{group}._target_={target}: no module {parts[0]!r} can be imported; run trainlab from "
        f"the folder that holds {parts[0]}.py (or its package), or add that folder to PYTHONPATH"
    )


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: to_plain(value) for key, value in config.items() if key not in OWN_KEYS}


def _takes_any_keyword(function: Callable[..., Any]) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters)


def _check(group: str, function: Callable[..., Any], settings: dict, supplied: tuple) -> None:
    """The settings against the target's signature, unless it takes ``**kwargs``."""
    if not _takes_any_keyword(function):
        check_settings(group, settings, function, supplied=supplied)


def build_user_model(config: Mapping[str, Any], spec: DatasetSpec) -> nn.Module:
    """The user's model, sized for ``spec`` through the shape arguments its signature names."""
    from hydra.utils import instantiate

    target = locate(config["_target_"], "model")
    shape = {
        "input_shape": tuple(spec.input_shape),
        "output_size": spec.output_size,
        "task": spec.task,
        "num_classes": spec.num_classes,
    }
    if not _takes_any_keyword(target):
        named = inspect.signature(target).parameters
        shape = {key: value for key, value in shape.items() if key in named}
    settings = {key: value for key, value in _settings(config).items() if key not in shape}
    _check("model", target, settings, tuple(shape))
    build = _call(instantiate, {"_target_": config["_target_"], "_partial_": True, **settings})
    model = build(**shape)  # the shape as it is (through instantiate a tuple would be a list)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model._target_={config['_target_']} gave {type(model).__name__!r}, not a "
            "torch.nn.Module; point it at a module class or a function that returns one"
        )
    return model


def build_user_loss(config: Mapping[str, Any], spec: DatasetSpec) -> Callable[..., Any]:
    """The user's loss as a callable ``(outputs, targets) -> scalar``, checked against the task."""
    from hydra.utils import instantiate

    target = locate(config["_target_"], "loss")
    _check_tasks(config, target, spec)
    settings = _settings(config)
    node = {"_target_": config["_target_"], **settings}
    if inspect.isclass(target):
        _check("loss", target, settings, ())
        return _call(instantiate, node)
    positional = list(inspect.signature(target).parameters)[:2]  # outputs, targets
    _check("loss", target, settings, tuple(positional))
    return _call(instantiate, {**node, "_partial_": True}) if settings else target


def _check_tasks(config: Mapping[str, Any], target: Any, spec: DatasetSpec) -> None:
    tasks = to_plain(config.get("tasks")) or getattr(target, "tasks", None)
    name = f"loss={config.get('name')} ({config['_target_']})"
    if tasks is None:
        log.warning(
            "%s declares no tasks; trusting it on the %s task (set loss.tasks=[%s] to say so)",
            name, spec.task, spec.task,
        )  # fmt: skip
        return
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if spec.task not in tasks:
        raise ConfigError(
            f"{name} fits {', '.join(tasks)}, not the {spec.task} task of dataset={spec.name}; "
            "choose another loss or dataset (or widen loss.tasks)"
        )


def _call(instantiate: Callable[..., Any], node: dict, **extra: Any) -> Any:
    """Hydra's instantiate, re-raising the user's own exception (with its traceback) rather
    than Hydra's wrapper around it."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, _convert_="all", **extra)
    except InstantiationException as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise
