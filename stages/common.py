"""Helpers shared by the stage scripts: params, input checks, atomic outputs.

Kept free of heavy imports (torch, transformers) so every stage starts fast.
"""
import contextlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

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


def load_params(section=None):
    """One section of params.yaml, or all of it."""
    try:
        with open(PARAMS_FILE, encoding="utf-8") as f:
            params = yaml.load(f, Loader=ParamsLoader) or {}
    except FileNotFoundError:
        raise StageError(f"{PARAMS_FILE} not found; run stages from the repository root") from None
    if section is None:
        return params
    if section not in params:
        raise StageError(f"{PARAMS_FILE} has no '{section}' section")
    return params[section]


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
