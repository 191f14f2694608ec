"""Check command lines before anything runs: one line per problem, with a did-you-mean.

Hydra's own composition errors are several lines long and name no likely fix; these turn
them into ``loss=hubr: no such option; did you mean huber?``. A sweep composes and checks
every member this way before its first member starts (see trainlab.sweep).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from trainlab.errors import first_line

Compose = Callable[[list[str]], DictConfig]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` did you mean X?`` for the closest choice, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _missing_option(error: MissingConfigException) -> str:
    group, _, name = (error.missing_cfg_file or "").rpartition("/")
    options = list(error.options or [])
    key = f"+{group}" if group == "experiment" else group
    return (
        f"{key}={name}: no such option{did_you_mean(name, options)} (options: {', '.join(options)})"
    )


def _unknown_key(key: str, overrides: list[str], compose: Compose) -> str:
    parent, _, leaf = key.rpartition(".")
    without = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node = compose(without)
        keys = OmegaConf.select(node, parent) if parent else node
    except Exception:
        keys = None
    known = [str(k) for k in keys if k != "hydra"] if isinstance(keys, DictConfig) else []
    close = difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    where = "the config"
    if parent and isinstance(keys, DictConfig):
        where = f"{parent}={keys['name']}" if "name" in keys else parent
    listing = f" ({where} has: {', '.join(known)})" if known else ""
    if "name" in known and not hint:  # e.g. -m schedule=cosine,step schedule.min_lr=0
        listing += (
            f"; a key of other {parent} options is set with ++{key}=... in a sweep (Hydra "
            f"first composes the default {parent}, which lacks it)"
        )
    return f"{key}: no such key{hint}{listing}"


def explain(error: Exception, overrides: list[str], compose: Compose) -> str:
    """One line saying which override is wrong and what was probably meant."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        return _missing_option(error)
    first = first_line(error) or repr(error)
    if isinstance(error, OverrideParseException):
        return f"{first} (write overrides as key=value, e.g. optimizer.lr=0.01)"
    match = re.match(r"Could not override '([^']+)'", first)
    if match:
        return _unknown_key(match.group(1), overrides, compose)
    return first
