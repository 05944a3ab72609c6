"""download: fetch the pairs CSV and the pretrained model into tracked outputs.

Every later stage reads only these outputs, so only this stage needs the network.
"""
import argparse
import fnmatch
import hashlib
import http.client
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, local_model, run

CSV_NAME = "pairs.csv"
# The tokenizer's vocabulary comes as tokenizer.json, or as its source: WordPiece vocab.txt (BERT),
# byte-level BPE vocab.json + merges.txt (RoBERTa), a SentencePiece model (DeBERTa-v3, XLM-R).
VOCABULARIES = ["tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model"]
# modules.json marks a sentence-transformers export, trained through its own pooling: train warns
# when a frozen base would keep the BERT pooler such a model never trained.
SENTENCE_TRANSFORMERS_MODULES = "modules.json"
MODEL_FILES = ["config.json", *VOCABULARIES, "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", SENTENCE_TRANSFORMERS_MODULES]
SAFETENSORS, PICKLED = "*.safetensors", "pytorch_model.bin"  # weights: the first the revision has
WEIGHTS_FILE = "model.safetensors"
OFFLINE_HINT = "set {param} in params.yaml to a local {what} to run offline"


def fetch_csv(url, dest, timeout=60, retries=3, backoff=1.0):
    """Copy a local path or file:// URL, or download an http(s) URL, to dest. Transient failures
    (timeouts, dropped connections, truncated bodies, HTTP 429 and 5xx) are retried with
    exponential backoff; anything else fails at once."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("", "file"):
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path) if scheme else url)
        if not source.is_file():
            raise StageError(f"data.url={url}: no such file")
        shutil.copyfile(source, dest)
        return
    hint = OFFLINE_HINT.format(param="data.url", what="CSV path or file:// URL")
    for attempt in range(retries + 1):
        try:
            return download(url, dest, timeout)
        except urllib.error.HTTPError as err:
            if err.code != 429 and err.code < 500 or attempt == retries:
                raise StageError(f"data.url={url}: HTTP {err.code} {err.reason}; {hint}") from None
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = str(getattr(err, "reason", err)) or type(err).__name__
            # A refused connection or an unknown host (no network) will not fix itself in seconds.
            if attempt == retries or isinstance(getattr(err, "reason", None), (ConnectionRefusedError, socket.gaierror)):
                raise StageError(f"data.url={url}: cannot download ({reason}); {hint}") from None
        delay = backoff * 2 ** attempt
        print(f"download: {reason} from {url}; retrying in {delay:g} s ({attempt + 1}/{retries})", file=sys.stderr)
        time.sleep(delay)


def download(url, dest, timeout):
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"Downloading {CSV_NAME}") as progress:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if size is not None and received != size:
        raise http.client.IncompleteRead(b"", size - received)


def check_sha256(path, expected, url):
    """data.sha256, when set, against the file's, read in blocks (DVC hashes the output itself)."""
    if not expected:
        return
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, "sha256").hexdigest()
    if actual != expected.lower():
        raise StageError(f"data.url={url}: sha256 is {actual}, but data.sha256 expects {expected}")


def weights_pattern(files, where):
    """safetensors when there are any, else the pickled PyTorch weights (never flax or TF files)."""
    if any(fnmatch.fnmatch(name, SAFETENSORS) for name in files):
        return SAFETENSORS
    if PICKLED in files:
        return PICKLED
    raise StageError(f"{where}: no {SAFETENSORS} or {PICKLED} weights")


def hub_snapshot(name, revision, section="model"):
    """A local folder with the model's config, tokenizer and weights files at a pinned hub revision.
    `section`: the params section naming the model (model, teacher), named in warnings and errors."""
    try:  # huggingface_hub's HTTP client (httpx before huggingface_hub 2): its errors are a dropped connection, a timeout
        import httpx2
    except ImportError:
        import httpx as httpx2
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        print(f"download: warning: {section}.revision={revision} is a moving ref; pin the commit hash printed "
              f"below in params.yaml so the same params always give the same model", file=sys.stderr)
    where = f"{section}.name={name} (revision {revision})"
    try:
        # One look-up gives the commit and its files: a branch that moves meanwhile changes neither.
        info = HfApi().model_info(name, revision=revision)
        patterns = [*MODEL_FILES, weights_pattern([file.rfilename for file in info.siblings], where)]
        source = Path(snapshot_download(repo_id=name, revision=info.sha, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, httpx2.HTTPError) as err:
        if isinstance(err, RevisionNotFoundError):
            reason = "no such revision in the repository"
        elif isinstance(err, RepositoryNotFoundError):
            reason = "no such repository, or it is private or gated"
        else:
            reason = str(err).strip().splitlines()[0]
        hint = OFFLINE_HINT.format(param=f"{section}.name", what="folder with config.json, tokenizer files and weights")
        raise StageError(f"{where}: cannot fetch from the Hugging Face hub ({reason}); {hint}") from None
    print(f"download: {name} at revision {revision} is commit {info.sha}")
    return source


def save_safetensors(source, dest):
    """Copy safetensors weights, or convert pickled ones read with torch's restricted unpickler,
    which rebuilds tensors and plain containers only: a pickle that would run code is refused."""
    weights = sorted(source.glob(SAFETENSORS))
    if weights:
        for path in weights:
            shutil.copyfile(path, dest / path.name)
        return
    import pickle

    import torch
    from safetensors.torch import save_file

    pickled = source / PICKLED
    try:
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0]
        raise StageError(f"{pickled}: refused to load: only tensors may be unpickled ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise StageError(f"{pickled}: not a state dict of tensors")
    # Tied weights share storage, which safetensors refuses; give each its own copy.
    save_file({key: tensor.contiguous().clone() for key, tensor in state.items()}, dest / WEIGHTS_FILE,
              metadata={"format": "pt"})


def fetch_model(name, revision, dest, section="model"):
    """Config, tokenizer and safetensors weights from a local folder or a pinned hub snapshot, into
    dest. `section`: the params section naming the model (model, or teach's teacher), named in errors."""
    param = f"{section}.name"
    source = local_model(name, param) or hub_snapshot(name, revision, section)
    if not (source / "config.json").is_file():
        raise StageError(f"{param}={name}: no config.json in {source}")
    weights_pattern([path.name for path in source.iterdir()], f"{param}={name}: {source}")
    if not any((source / vocabulary).is_file() for vocabulary in VOCABULARIES):
        raise StageError(f"{param}={name}: cannot load its tokenizer: none of {', '.join(VOCABULARIES)} in {source}")

    from transformers import AutoTokenizer

    config = model_config(name, source, param)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, config=config, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise StageError(f"{param}={name}: cannot load its tokenizer ({str(err).splitlines()[0]})") from None
    dest.mkdir(parents=True)
    save_safetensors(source, dest)
    tokenizer.save_pretrained(dest)
    config.save_pretrained(dest)
    if (source / SENTENCE_TRANSFORMERS_MODULES).is_file():
        shutil.copyfile(source / SENTENCE_TRANSFORMERS_MODULES, dest / SENTENCE_TRANSFORMERS_MODULES)


def model_config(name, source, param="model.name"):
    """The model's transformers config. Google's original BERT releases (the default model among
    them) ship TensorFlow's bert_config.json as config.json, without `model_type`; as transformers
    used to, take the type from the model's name, and write the config transformers now expects."""
    import json

    from transformers import CONFIG_MAPPING, AutoConfig

    raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
    if "model_type" in raw:
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    named = [model_type for model_type in CONFIG_MAPPING.keys() if model_type in str(name).lower()]
    if not named:
        raise StageError(f"{param}={name}: {source / 'config.json'} has no model_type, and the name names no "
                         f"model type transformers knows")
    return CONFIG_MAPPING[max(named, key=len)].from_dict(raw)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="where the CSV goes (data/raw)")
    parser.add_argument("model_dir", type=Path, help="where the pretrained model goes (models/pretrained)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds without data before a download attempt fails")
    parser.add_argument("--retries", type=int, default=3, help="retries of a transient download failure, with backoff")
    args = parser.parse_args()
    data, model = load_params("data"), load_params("model")
    local_model(model["name"], "model.name")  # a missing folder stops the stage before the CSV is fetched

    with atomic_path(args.raw_dir) as raw_dir:
        raw_dir.mkdir()
        fetch_csv(str(data["url"]), raw_dir / CSV_NAME, args.timeout, args.retries)
        check_sha256(raw_dir / CSV_NAME, data.get("sha256"), data["url"])
        with atomic_path(args.model_dir) as model_dir:
            fetch_model(str(model["name"]), str(model["revision"]), model_dir)


if __name__ == "__main__":
    run(main)
