"""The search space: a YAML file beside params.yaml whose keys are params.yaml keys, each with a
distribution, read into Optuna distributions and checked against params.yaml.

    train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    train.epochs:        {type: int, low: 1, high: 5}
    train.batch_size:    {type: categorical, choices: [8, 16, 32]}

float: low, high, and either log: true (log-uniform) or step (a grid); int: low, high, optional step
or log; categorical: choices, a list of numbers, strings, booleans or null.
"""
import math
from pathlib import Path

import yaml

from tune.errors import TuneError

TYPES = ("float", "int", "categorical")
FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}


def lookup(params, key):
    """The value of a dotted key ("train.learning_rate") in params.yaml's data; KeyError when absent."""
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _number(path, key, field, value, integer):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise TuneError(f"{path}: {key}: {field} must be {kind}, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TuneError(f"{path}: {key}: {field} must be finite, not {value!r}")
    return value


def distribution(path, key, spec):
    """One entry of the file as an Optuna distribution, or a TuneError naming the file and key."""
    import optuna.distributions as dist

    if not isinstance(spec, dict) or "type" not in spec:
        raise TuneError(f"{path}: {key}: expected a mapping with a type ({', '.join(TYPES)}), not {spec!r}")
    kind = spec["type"]
    if kind not in TYPES:
        raise TuneError(f"{path}: {key}: unknown distribution type {kind!r}; expected one of {', '.join(TYPES)}")
    unknown = set(spec) - FIELDS[kind] - {"type"}
    if unknown:
        raise TuneError(f"{path}: {key}: unknown field(s) {', '.join(sorted(unknown))} for type {kind}; "
                        f"expected {', '.join(sorted(FIELDS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{path}: {key}: choices must be a non-empty list")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise TuneError(f"{path}: {key}: choice {choice!r} is not a number, string, boolean or null")
        if len({yaml.safe_dump(c) for c in choices}) != len(choices):
            raise TuneError(f"{path}: {key}: choices repeat a value")
        return dist.CategoricalDistribution(choices)
    integer = kind == "int"
    for field in ("low", "high"):
        if field not in spec:
            raise TuneError(f"{path}: {key}: type {kind} needs {field}")
    low = _number(path, key, "low", spec["low"], integer)
    high = _number(path, key, "high", spec["high"], integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise TuneError(f"{path}: {key}: log must be true or false, not {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(path, key, "step", step, integer)
        if step <= 0:
            raise TuneError(f"{path}: {key}: step must be positive, not {step!r}")
        if log:
            raise TuneError(f"{path}: {key}: step and log: true cannot be combined")
    if low > high:
        raise TuneError(f"{path}: {key}: low ({low}) is above high ({high})")
    if log and low <= 0:
        raise TuneError(f"{path}: {key}: log: true needs low > 0, not {low}")
    if integer:
        return dist.IntDistribution(low, high, log=log, step=step or 1)
    return dist.FloatDistribution(float(low), float(high), log=log, step=step)


def load(path, params):
    """{params.yaml key: Optuna distribution} from the search-space file at `path`; every key must be
    a params.yaml key (params: params.yaml's data) whose current value is not a mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TuneError(f"{path}: file not found; write the search space there or pass --search-space") from None
    except yaml.YAMLError as err:
        raise TuneError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise TuneError(f"{path}: expected a mapping of params.yaml keys to distributions")
    space = {}
    for key, spec in data.items():
        try:
            current = lookup(params, str(key))
        except KeyError:
            raise TuneError(f"{path}: {key}: not a key of params.yaml") from None
        if isinstance(current, dict):
            raise TuneError(f"{path}: {key}: a section of params.yaml, not a param; name one of its keys")
        if key in ("split.folds", "split.fold"):
            raise TuneError(f"{path}: {key}: set by --folds, not searched")
        space[str(key)] = distribution(path, key, spec)
    return space


def describe(space):
    """The space as plain data, for the study's record and the report."""
    import optuna.distributions as dist

    import json

    return {key: json.loads(dist.distribution_to_json(d)) for key, d in space.items()}


def override(key, value):
    """A `dvc exp run -S` argument setting `key` to `value` in params.yaml. Strings are quoted, so
    a value like "true" or "1e-3" stays a string; floats are written in full (repr)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def in_space(distribution, value):
    """Whether `value` (a params.yaml value) is a point of `distribution`."""
    import optuna.distributions as dist

    if isinstance(distribution, dist.CategoricalDistribution):
        return any(type(value) is type(choice) and value == choice for choice in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, dist.IntDistribution) and not isinstance(value, int):
        return False
    return distribution._contains(distribution.to_internal_repr(value))
