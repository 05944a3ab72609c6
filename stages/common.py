"""Helpers shared by the stage scripts: params, input checks, atomic outputs.

Kept free of heavy imports (torch, transformers) so every stage starts fast.
"""
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import yaml

PARAMS_FILE = "params.yaml"
COLUMNS = ("query", "title", "label")
LABELS = ("irrelevant", "relevant")  # index = class id in the model's logits (train.num_labels: 2)
ONE_LOGIT_LABELS = ("relevant",)    # train.num_labels: 1, P(relevant) = sigmoid(logit)


class StageError(Exception):
    """A failure the user can fix; reported as one line without a traceback."""


def run(main):
    """Run a stage's main(); turn StageError into `error: ...` and exit status 1."""
    try:
        main()
    except StageError as err:
        sys.exit(f"error: {err}")


class ParamsLoader(yaml.SafeLoader):
    """YAML as DVC writes params.yaml: `dvc exp run -S train.learning_rate=5e-5` writes `5e-05` (YAML
    1.2, through ruamel), which YAML 1.1's rules, PyYAML's, read as the string '5e-05' (training then
    stopped on comparing a str with a float). A number with an exponent and no point is a float here."""


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


class Param(NamedTuple):
    """What one param may be: `kind` (int, number, bool, text, texts: a list of names, or choice),
    bounds (`low`/`high` inclusive, `above`/`below` exclusive), the `choices`, whether null is
    allowed, words also allowed (`also`, such as auto), and `expected`, the error's wording where the
    generic one would say less."""
    kind: str
    low: float = None
    high: float = None
    above: float = None
    below: float = None
    choices: tuple = ()
    null: bool = False
    also: tuple = ()
    expected: str = None


def integer(low=None, high=None, **options):
    return Param("int", low=low, high=high, **options)


def number(low=None, high=None, above=None, below=None, **options):
    return Param("number", low=low, high=high, above=above, below=below, **options)


def choice(*choices, **options):
    return Param("choice", choices=choices, **options)


FLAG, TEXT, TEXTS = Param("bool"), Param("text"), Param("texts")

# Every param of params.yaml, checked by load_params before a stage reads any: a value of the wrong
# type or out of range stops the stage in one line naming it (docs/params.md says what each does).
# A stage checks what depends on other params or on its inputs itself (split.fold < split.folds,
# encode.max_length within the model's, vespa.model's file names). Add a param here with its section.
PARAMS = {
    "data": {"url": TEXT,
             "sha256": Param("sha256", null=True, expected="null or a SHA-256 of 64 hexadecimal digits")},
    "model": {"name": TEXT, "revision": TEXT,
              "num_layers": integer(1, null=True, expected="null (all of them) or a positive integer")},
    "split": {"strategy": choice("group", "random"),
              "val_size": number(above=0, below=1, expected="a fraction between 0 and 1"),
              "folds": integer(2, null=True, expected="null (one holdout split) or an integer of at least 2"),
              "fold": integer(0),
              "seed": integer(),
              "conflicting_labels": choice("relevant", "drop", "error")},
    "encode": {"max_length": integer(8)},
    "teacher": {"name": Param("text", null=True, expected="null (no teacher) or a hub id or folder of a cross-encoder"),
                "revision": Param("text", null=True, expected="null (the hub repository's main) or a commit, branch or tag")},
    "train": {"num_labels": choice(2, 1, expected="2 (irrelevant/relevant, softmax) or 1 (one relevance logit, sigmoid)"),
              "epochs": number(above=0),
              "batch_size": integer(1),
              "eval_batch_size": integer(1),
              "learning_rate": number(above=0),
              "warmup_steps": number(0),
              "weight_decay": number(0),
              "freeze_base": FLAG,
              "cache_features": FLAG,
              "group_by_length": FLAG,
              "seed": integer(0),
              "precision": choice("auto", "fp32", "fp16", "bf16"),
              "gpus": integer(1),
              "resume": FLAG,
              "loss": choice("pointwise", "rank_net", "list_net", "lambda_loss", "margin_mse", "mse"),
              "list_size": integer(2)},
    "export": {"opset": integer(1), "atol": number(0)},
    "quantize": {"per_channel": FLAG,
                 "reduce_range": FLAG,
                 "op_types": TEXTS,
                 "per_token": FLAG,
                 "min_spearman": number(),  # above 1: fails every int8 model that moves the scores
                 "max_mean_score_diff": number(0),
                 "check_pairs": integer(1)},
    "evaluate": {"plot_pairs": integer(1)},
    "vespa": {"model": TEXT,
              "max_ranking_drop": number(0),
              "rerun_hits": integer(1),
              "max_length": integer(3, also=("auto",), expected="auto or an integer from 3 to encode.max_length"),
              "length_coverage": number(above=0, high=1, expected="a share above 0 and at most 1"),
              "rerank_count": integer(1),
              "intraop_threads": integer(1, null=True, expected="null (Vespa's default) or a positive integer"),
              "gpu_device": integer(0, null=True, expected="null (Vespa's default) or a GPU number, 0 or more, as an integer"),
              "timed_hits": integer(1),
              "eval_pairs": integer(1)},
}


def yaml_text(value):
    """A value as params.yaml spells it: null, true, [MatMul, Gather]."""
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_text, value)) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def describe(param):
    """What a param may be, in the words of its error."""
    if param.expected:
        return param.expected
    if param.kind == "choice":
        words = "one of " + ", ".join(map(str, param.choices))
    elif param.kind == "bool":
        words = "true or false"
    elif param.kind == "text":
        words = "a non-empty string"
    elif param.kind == "texts":
        words = "a non-empty list of names"
    else:
        noun = "an integer" if param.kind == "int" else "a number"
        if param.low is not None and param.high is not None:
            words = f"{noun} from {param.low} to {param.high}"
        elif param.kind == "int" and param.low == 1:
            words = "a positive integer"
        elif param.low is not None:
            words = f"{noun}, 0 or more" if param.low == 0 else f"{noun} of at least {param.low}"
        else:
            words = " and ".join([*([f"{noun} above {param.above}"] if param.above is not None else []),
                                  *([f"below {param.below}"] if param.below is not None else []),
                                  *([f"at most {param.high}"] if param.high is not None else [])]) or noun
    return " or ".join([*(["null"] if param.null else []), *param.also, words])


def fits(param, value):
    """Whether `value` is what `param` allows. A bool is not a number, nor a number a string."""
    if value is None:
        return param.null
    if value in param.also and isinstance(value, str):
        return True
    if param.kind == "choice":
        return any(type(value) is type(option) and value == option for option in param.choices)
    if param.kind == "bool":
        return isinstance(value, bool)
    if param.kind == "text":
        return isinstance(value, str) and value.strip() != ""
    if param.kind == "texts":
        return isinstance(value, list) and bool(value) and all(isinstance(item, str) and item for item in value)
    if param.kind == "sha256":
        return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value) is not None
    kinds = (int,) if param.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        return False
    return ((param.low is None or value >= param.low) and (param.high is None or value <= param.high)
            and (param.above is None or value > param.above) and (param.below is None or value < param.below))


def check_params(params):
    """Refuse, in one line naming it, the first param of PARAMS whose value does not fit, and any key
    of a known section that is not a param (a misspelt one). Params missing from the file are DVC's
    to report, and sections unknown here are left alone."""
    import difflib

    if not isinstance(params, dict):
        raise StageError(f"{PARAMS_FILE}: expected sections of params (data, model, train, ...)")
    for section, table in PARAMS.items():
        values = params.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise StageError(f"{PARAMS_FILE}: '{section}' is {yaml_text(values)}; expected its params, one per line")
        for key, value in values.items():
            if key not in table:
                close = difflib.get_close_matches(str(key), table, n=1)
                hint = f"did you mean {section}.{close[0]}?" if close else f"the {section} params are {', '.join(table)}"
                raise StageError(f"{section}.{key}: not a param; {hint} (docs/params.md)")
            if not fits(table[key], value):
                raise StageError(f"{section}.{key}={yaml_text(value)}: expected {describe(table[key])}")


def load_params(section=None):
    """One section of params.yaml, or all of it, once every param in the file is checked against
    PARAMS: a stage stops on a bad value before it does any work, whichever stage the value is for."""
    try:
        with open(PARAMS_FILE, encoding="utf-8") as f:
            params = yaml.load(f, Loader=ParamsLoader) or {}
    except FileNotFoundError:
        raise StageError(f"{PARAMS_FILE} not found; run stages from the repository root") from None
    except yaml.YAMLError as err:
        raise StageError(f"{PARAMS_FILE}: not valid YAML ({' '.join(str(err).split())})") from None
    check_params(params)
    if section is None:
        return params
    if section not in params:
        raise StageError(f"{PARAMS_FILE} has no '{section}' section")
    return params[section]


def local_model(name, param):
    """The folder a model name (model.name, teacher.name) means, or None for a hub id. A name starting
    with /, ./, ../ or ~ is a folder: ~ expanded, a relative one under the project root, where stages
    run; it must exist. Another name is a folder when one by that name exists, else a hub id."""
    name = str(name)
    if not name.startswith(("/", "./", "../", "~")) and name not in (".", ".."):
        return Path(name) if Path(name).is_dir() else None
    folder = Path(os.path.abspath(Path(name).expanduser()))
    if not folder.is_dir():
        raise StageError(f"{param}={name}: no such folder {folder}; a hub id starts with none of /, ./, ../, ~")
    return folder


def model_inputs(model, tokenizer):
    """The tokenizer's outputs that the model takes, in the tokenizer's order: BERT takes
    token_type_ids, RoBERTa and ModernBERT do not, and DeBERTa-v3's tokenizer gives them to a model
    without token type embeddings (type_vocab_size 0), which ignores them."""
    import inspect

    taken = inspect.signature(model.forward).parameters
    names = [name for name in tokenizer.model_input_names if name in taken]
    if getattr(model.config, "type_vocab_size", 1) == 0:
        names = [name for name in names if name != "token_type_ids"]
    return names


def read_pairs(path, chunk_rows=20_000):
    """Read a query,title,label CSV in chunks of `chunk_rows` rows, checking its schema and every
    row; yields DataFrames (query, title, label) indexed by row number in the file (1-based, after
    the header). Extra columns are dropped. Memory holds one chunk, however long the file."""
    import pandas as pd

    header = csv_header(path)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}; expected query,title,label")
    rows = 0
    try:
        chunks = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", usecols=list(COLUMNS),
                             chunksize=chunk_rows)
        for chunk in chunks:
            chunk.index += 2  # read_csv numbers rows on across chunks; 1-based, after the header line
            rows += len(chunk)
            yield check_rows(path, chunk[list(COLUMNS)])
    except (UnicodeDecodeError, pd.errors.ParserError) as err:
        raise StageError(f"{path}: not a readable UTF-8 CSV ({str(err).splitlines()[0]})") from None
    if rows == 0:
        raise StageError(f"{path}: no rows after the header")


def read_all_pairs(path):
    """read_pairs for a file known to be small (a test's, or a bounded sample): one DataFrame."""
    import pandas as pd

    return pd.concat(read_pairs(path)).reset_index(drop=True)


def sample_queries(path, pairs, param):
    """The pairs of a query,title,label CSV sampled by whole queries, each query kept when the hash
    of its text falls below pairs / all pairs: about `pairs` pairs however many there are, the same
    for the same file; all of them when there are fewer. `param` names the setting in errors."""
    import pandas as pd

    total = sum(len(chunk) for chunk in read_pairs(path))
    if total <= pairs:
        return pd.concat(read_pairs(path))
    cutoff = pairs / total * 2.0**64
    kept = pd.concat([chunk[pd.util.hash_pandas_object(chunk["query"], index=False).to_numpy() < cutoff]
                      for chunk in read_pairs(path)])
    if kept.empty:
        raise StageError(f"{param}={pairs}: no query of {path} was sampled; raise it")
    return kept


def csv_header(path):
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f))
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except StopIteration:
        raise StageError(f"{path}: file is empty; expected a header 'query,title,label' and rows") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise StageError(f"{path}: not a readable UTF-8 CSV ({str(err).splitlines()[0]})") from None


def check_rows(path, pairs):
    """Refuse a blank query or title, or a label other than 0 or 1, naming the first such row."""
    import pandas as pd

    for column in ("query", "title"):
        blank = pairs[column].str.strip() == ""
        if blank.any():
            raise StageError(f"{path}: row {blank.idxmax()}: column '{column}' is empty")
    labels = pd.to_numeric(pairs["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = bad.idxmax()
        raise StageError(f"{path}: row {row}: column 'label' is {pairs['label'][row]!r}; expected 0 or 1")
    return pairs.assign(label=labels.astype("int8"))


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield stand-ins for `paths`, side by side in one scratch folder. On success each replaces
    its path (removing it when nothing was written); on failure none does, so a stage never
    leaves half its outputs behind."""
    paths = [Path(p) for p in paths]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}.", dir=paths[0].parent))
    try:
        stand_ins = [scratch / path.name for path in paths]
        yield stand_ins
        for stand_in, path in zip(stand_ins, paths):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            if stand_in.exists():
                stand_in.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path):
    """atomic_paths for one path."""
    with atomic_paths(path) as (stand_in,):
        yield stand_in


def cpu_description():
    """This machine's CPU model, core count and widest int8-relevant instruction set, recorded beside
    every speed figure (VNNI makes int8 GEMMs up to 4x fp32's, AMX several times more; on AVX2 alone
    they are no faster)."""
    import os
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    isa = next((name for flag, name in [("amx_int8", "AMX-INT8 and AVX-512 VNNI"), ("avx512_vnni", "AVX-512 VNNI"),
                                        ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
                if flag in flags), "older than AVX2")
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa}


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


REPORT_FILE = "report.json"  # beside each stage's metrics.json: every figure the stage measured (docs/metrics.md)


def report_path(metrics_path):
    """The stage's report, beside its metrics file: plain JSON, a DVC output but not a metric."""
    return Path(metrics_path).with_name(REPORT_FILE)


def headline(record, keys):
    """The part of `record` at the dotted `keys` (`served.ndcg@10`) that it holds, nested as in
    `record`: what a stage declares as its DVC metrics, the numbers a decision is made on. The whole
    record goes to its report (report_path), so `dvc exp show` and `dvc metrics diff` stay readable."""
    picked = {}
    for key in keys:
        *parents, name = key.split(".")
        source, target = record, picked
        for part in parents:
            source = source.get(part) if isinstance(source, dict) else None
            target = target.setdefault(part, {})
        if isinstance(source, dict) and name in source:
            target[name] = source[name]
    return _without_empty(picked)


def _without_empty(tree):
    return {key: _without_empty(value) if isinstance(value, dict) else value for key, value in tree.items()
            if not isinstance(value, dict) or _without_empty(value)}


def write_metrics(metrics_path, record, keys, report=None):
    """The stage's record whole to its report (`report`, default report_path(metrics_path)) and its
    headline `keys` to `metrics_path`."""
    write_json(report or report_path(metrics_path), record)
    write_json(metrics_path, headline(record, keys))
