"""download: fetch the pairs CSV and the pretrained model into tracked outputs.

Every later stage reads only these outputs, so only this stage needs the network.
"""
import argparse
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

from stages.common import StageError, atomic_path, load_params, run

CSV_NAME = "pairs.csv"
# Weights are taken only as safetensors: nothing downloaded is unpickled or executed.
MODEL_FILES = ["config.json", "*.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
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
    actual = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if expected and actual != expected.lower():
        raise StageError(f"data.url={url}: sha256 is {actual}, but data.sha256 expects {expected}")


def fetch_model(name, revision, dest):
    """Copy config, tokenizer and safetensors weights from a local folder or a pinned hub snapshot."""
    if Path(name).is_dir():
        source = Path(name)
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            print(f"download: warning: model.revision={revision} is a moving ref; pin the commit hash printed "
                  f"below in params.yaml so the same params always give the same model", file=sys.stderr)
        try:
            source = Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=MODEL_FILES))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
            hint = OFFLINE_HINT.format(param="model.name", what="folder with config.json, tokenizer files and model.safetensors")
            first_line = str(err).strip().splitlines()[0]
            raise StageError(f"model.name={name} (revision {revision}): cannot fetch from the Hugging Face hub ({first_line}); {hint}") from None
        print(f"download: {name} at revision {revision} is commit {source.name}")  # snapshots/<commit hash>
    for required in ("config.json", "*.safetensors"):
        if not any(source.glob(required)):
            raise StageError(f"model.name={name}: no {required} in {source}; weights are loaded from safetensors only")
    if not any((source / vocabulary).is_file() for vocabulary in ("tokenizer.json", "vocab.txt")):
        raise StageError(f"model.name={name}: cannot load its tokenizer: no tokenizer.json or vocab.txt in {source}")

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise StageError(f"model.name={name}: cannot load its tokenizer ({str(err).splitlines()[0]})") from None
    dest.mkdir(parents=True)
    tokenizer.save_pretrained(dest)
    for weights in [source / "config.json", *sorted(source.glob("*.safetensors"))]:
        shutil.copyfile(weights, dest / weights.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="where the CSV goes (data/raw)")
    parser.add_argument("model_dir", type=Path, help="where the pretrained model goes (models/pretrained)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds without data before a download attempt fails")
    parser.add_argument("--retries", type=int, default=3, help="retries of a transient download failure, with backoff")
    args = parser.parse_args()
    data, model = load_params("data"), load_params("model")

    with atomic_path(args.raw_dir) as raw_dir:
        raw_dir.mkdir()
        fetch_csv(str(data["url"]), raw_dir / CSV_NAME, args.timeout, args.retries)
        check_sha256(raw_dir / CSV_NAME, data.get("sha256"), data["url"])
        with atomic_path(args.model_dir) as model_dir:
            fetch_model(str(model["name"]), str(model["revision"]), model_dir)


if __name__ == "__main__":
    run(main)
