"""Helpers shared by the stage scripts: params, input checks, atomic outputs.

Kept free of heavy imports (torch, transformers) so every stage starts fast.
"""
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

PARAMS_FILE = "params.yaml"
COLUMNS = ("query", "title", "label")
LABELS = ("irrelevant", "relevant")  # index = class id in the model's logits


class StageError(Exception):
    """A failure the user can fix; reported as one line without a traceback."""


def run(main):
    """Run a stage's main(); turn StageError into `error: ...` and exit status 1."""
    try:
        main()
    except StageError as err:
        sys.exit(f"error: {err}")


def load_params(section):
    try:
        with open(PARAMS_FILE, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise StageError(f"{PARAMS_FILE} not found; run stages from the repository root") from None
    if section not in params:
        raise StageError(f"{PARAMS_FILE} has no '{section}' section")
    return params[section]


def read_pairs(path):
    """Read a query,title,label CSV and check its schema; extra columns are dropped."""
    import pandas as pd

    try:
        pairs = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise StageError(f"{path}: file is empty; expected a header 'query,title,label' and rows") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as err:
        raise StageError(f"{path}: not a readable UTF-8 CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in pairs.columns]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}; expected query,title,label")
    if pairs.empty:
        raise StageError(f"{path}: no rows after the header")
    pairs = pairs[list(COLUMNS)]
    for column in ("query", "title"):
        blank = pairs[column].str.strip() == ""
        if blank.any():
            row = int(blank.idxmax()) + 2  # 1-based, after the header line
            raise StageError(f"{path}: row {row}: column '{column}' is empty")
    labels = pd.to_numeric(pairs["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(bad.idxmax()) + 2
        raise StageError(f"{path}: row {row}: column 'label' is {pairs['label'][bad.idxmax()]!r}; expected 0 or 1")
    return pairs.assign(label=labels.astype("int64"))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path` to write into; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
