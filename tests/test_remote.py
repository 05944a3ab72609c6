"""Versioned models in remote storage: push, pull, get by tag, and integrity, against a local
directory remote and an S3-compatible server (moto) on 127.0.0.1. Nothing leaves the machine."""
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from tests.conftest import build_once, copy_project, dvc, git, locked_md5, run_cli, run_stages_in_process
from tests.tiny import set_params

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
MODEL = "models/model.onnx"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


class LocalRemote:
    env = {}

    def __init__(self, path):
        self.path = path

    def add_to(self, project):
        dvc("remote", "add", "--default", "storage", str(self.path), cwd=project)

    def corrupt(self, md5):
        stored = self.path / "files" / "md5" / md5[:2] / md5[2:]
        stored.chmod(0o644)
        stored.write_bytes(stored.read_bytes()[:-16] + b"corrupted bytes!")


class S3Remote:
    env = S3_CREDENTIALS

    def __init__(self, endpoint):
        self.endpoint, self.bucket = endpoint, f"models-{uuid.uuid4().hex[:8]}"
        s3_client(endpoint).create_bucket(Bucket=self.bucket)

    def add_to(self, project):
        dvc("remote", "add", "--default", "storage", f"s3://{self.bucket}/relevance", cwd=project)
        dvc("remote", "modify", "storage", "endpointurl", self.endpoint, cwd=project)
        # Credentials stay out of git, as the README says; clones get them from the environment.
        dvc("remote", "modify", "--local", "storage", "access_key_id", "testing", cwd=project)
        dvc("remote", "modify", "--local", "storage", "secret_access_key", "testing", cwd=project)

    def corrupt(self, md5):
        key = f"relevance/files/md5/{md5[:2]}/{md5[2:]}"
        client = s3_client(self.endpoint)
        body = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        client.put_object(Bucket=self.bucket, Key=key, Body=body[:-16] + b"corrupted bytes!")


@pytest.fixture(params=["local", "s3"])
def remote(request, tmp_path):
    if request.param == "local":
        return LocalRemote(tmp_path / "remote")
    return S3Remote(request.getfixturevalue("s3_endpoint"))


V2_PARAMS = {"export": {"opset": 17}}  # another model.onnx, without retraining


@pytest.fixture(scope="session")
def v2_run_cache(shared_dir, reproduced_project):
    """DVC's run cache after export ran with V2_PARAMS, built once: both remotes' tests reproduce v2
    from it, as DVC does for anyone who already ran the same stage. The stage runs in this process
    and `dvc commit` records it, run cache included, as for reproduced_project. (Only the model file
    is versioned here: the stages after export are left to the pipeline tests.)"""
    def build(path):
        copy_project(reproduced_project, path)
        set_params(path, V2_PARAMS)
        run_stages_in_process(path, ["export"])
        dvc("commit", "--force", "export", cwd=path)

    return build_once(shared_dir, "v2-run-cache", build) / ".dvc/cache"


def copy_if_missing(source, destination):
    """DVC's cached objects are read-only and named by their hash: one already there is the same."""
    if not Path(destination).exists():
        shutil.copy2(source, destination)


def fresh_clone(project, dest):
    run_cli(["git", "clone", "-q", str(project), str(dest)], cwd=project.parent)
    return dest


def test_tagged_models_are_pushed_pulled_and_fetched_by_tag(project, remote, v2_run_cache, tmp_path):
    shutil.copytree(v2_run_cache, project / ".dvc/cache", dirs_exist_ok=True, copy_function=copy_if_missing)
    env = remote.env
    remote.add_to(project)
    dvc("remote", "modify", "storage", "verify", "true", cwd=project)
    git("commit", "-q", "-am", "store models in the remote", cwd=project)
    dvc("push", cwd=project, **env)
    git("tag", "v1", cwd=project)
    git("tag", "-a", "relevance-model@v1.0.0", "-m", "relevance-model v1.0.0", cwd=project)
    v1_model, v1_md5 = (project / MODEL).read_bytes(), locked_md5(project, "export", MODEL)

    set_params(project, V2_PARAMS)
    assert "Stage 'export' is cached - skipping run" in dvc("repro", "export", cwd=project).stdout
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "export opset 17", cwd=project)
    git("tag", "v2", cwd=project)
    dvc("push", cwd=project, **env)
    v2_model = (project / MODEL).read_bytes()
    assert v1_model != v2_model

    clone = fresh_clone(project, tmp_path / "clone")
    assert not (clone / ".dvc" / "cache").exists()
    dvc("pull", "export", cwd=clone, **env)
    assert (clone / MODEL).read_bytes() == v2_model

    # dvc get and dvc artifacts get from a repository with an empty cache: the bytes come from the remote.
    source = fresh_clone(project, tmp_path / "source")
    dvc("get", str(source), MODEL, "--rev", "v1", "-o", str(tmp_path / "get-v1.onnx"), cwd=tmp_path, **env)
    dvc("artifacts", "get", str(source), "relevance-model", "--rev", "v1.0.0", "-o", str(tmp_path / "artifact-v1.onnx"),
        cwd=tmp_path, **env)
    assert (tmp_path / "get-v1.onnx").read_bytes() == v1_model
    assert (tmp_path / "artifact-v1.onnx").read_bytes() == v1_model

    # A corrupted object in the remote fails the pull: nobody silently receives another model.
    remote.corrupt(v1_md5)
    checkout_v1 = fresh_clone(project, tmp_path / "checkout-v1")
    git("checkout", "-q", "v1", cwd=checkout_v1)
    result = dvc("pull", "export", cwd=checkout_v1, check=False, **env)
    assert result.returncode != 0
    assert "models/model.onnx" in result.stderr
    assert not (checkout_v1 / MODEL).exists()


def test_push_to_an_unreachable_remote_fails_clearly_and_keeps_local_data(project):
    # A port nothing listens on, for as long as the push runs: bound here (without SO_REUSEADDR) and
    # never listened on, so a connection to it is refused, and no other process (another worker's
    # server, say) can take it between finding it and the push.
    with socket.socket() as unreachable:
        unreachable.bind(("127.0.0.1", 0))
        port = unreachable.getsockname()[1]
        dvc("remote", "add", "--default", "storage", "s3://models/relevance", cwd=project)
        dvc("remote", "modify", "storage", "endpointurl", f"http://127.0.0.1:{port}", cwd=project)
        model_before = (project / MODEL).read_bytes()
        result = dvc("push", cwd=project, check=False, **S3_CREDENTIALS)
    assert result.returncode != 0
    # DVC's own one-line error names the endpoint it could not reach.
    assert f'ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:{port}/' in result.stderr
    assert (project / MODEL).read_bytes() == model_before
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout
