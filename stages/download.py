"""download: fetch the pairs CSV and the pretrained model into tracked outputs.

Every later stage reads only these outputs, so only this stage needs the network.
"""
import argparse
import hashlib
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, run

CSV_NAME = "pairs.csv"
# Weights are taken only as safetensors: nothing downloaded is unpickled or executed.
MODEL_FILES = ["config.json", "*.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
OFFLINE_HINT = "set {param} in params.yaml to a local {what} to run offline"


def fetch_csv(url, dest, timeout=60):
    """Copy a local path or file:// URL, or download an http(s) URL, to dest."""
    from tqdm.auto import tqdm

    scheme = urllib.parse.urlparse(url).scheme
    if scheme in ("", "file"):
        source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path) if scheme else url)
        if not source.is_file():
            raise StageError(f"data.url={url}: no such file")
        shutil.copyfile(source, dest)
        return
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"Downloading {CSV_NAME}") as progress:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise StageError(f"data.url={url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        hint = OFFLINE_HINT.format(param="data.url", what="CSV path or file:// URL")
        raise StageError(f"data.url={url}: cannot download ({reason}); {hint}") from None


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

        try:
            source = Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=MODEL_FILES))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
            hint = OFFLINE_HINT.format(param="model.name", what="folder with config.json, tokenizer files and model.safetensors")
            first_line = str(err).strip().splitlines()[0]
            raise StageError(f"model.name={name} (revision {revision}): cannot fetch from the Hugging Face hub ({first_line}); {hint}") from None
    for required in ("config.json", "*.safetensors"):
        if not any(source.glob(required)):
            raise StageError(f"model.name={name}: no {required} in {source}; weights are loaded from safetensors only")

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
    args = parser.parse_args()
    data, model = load_params("data"), load_params("model")

    with atomic_path(args.raw_dir) as raw_dir:
        raw_dir.mkdir()
        fetch_csv(str(data["url"]), raw_dir / CSV_NAME)
        check_sha256(raw_dir / CSV_NAME, data.get("sha256"), data["url"])
        with atomic_path(args.model_dir) as model_dir:
            fetch_model(str(model["name"]), str(model["revision"]), model_dir)


if __name__ == "__main__":
    run(main)
