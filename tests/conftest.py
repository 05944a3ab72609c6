import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import TINY_MODELS, csv_texts, make_scratch_project, write_pairs_csv, write_tiny_bert

STAGES = ["download", "split", "encode", "teach", "train", "export", "quantize", "evaluate", "vespa"]


def pipeline_env(**extra):
    """Environment for dvc and the stages: this interpreter's `python` first on PATH, no telemetry."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1"}
    return {**env, **extra}


def run_cli(args, cwd, check=True, **env):
    """Run a command-line tool (dvc, git, a stage) in `cwd`; returns the CompletedProcess."""
    result = subprocess.run(args, cwd=cwd, env=pipeline_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def require_tool(found, what):
    """For a test that needs a tool .ci/run installs (jing, PostgreSQL, Node.js): skipped where the
    tool is missing on a developer's machine, failed in CI (CI=true), where missing means .ci/run broke."""
    if not found:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{what} (.ci/run installs it)")


@pytest.fixture(scope="session")
def node():
    """Node.js and npm, for the tests of clients/node."""
    require_tool(shutil.which("node") and shutil.which("npm"), "needs Node.js and npm")


def dvc(*args, cwd, check=True, **env):
    return run_cli([sys.executable, "-m", "dvc", *args], cwd, check=check, **env)


def git(*args, cwd):
    return run_cli(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd)


def dvc_experiments(project, metrics_file):
    """{experiment name: (params.yaml data, `metrics_file`'s data)} from `dvc exp show --json`."""
    found = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=project).stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = (data["params"]["params.yaml"]["data"], data["metrics"][metrics_file]["data"])
    return found


def locked_md5(project, stage, path):
    """The md5 that dvc.lock records for `stage`'s output `path`."""
    import yaml

    outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(out["md5"] for out in outs if out["path"] == path)


def run_stages_in_process(project, names):
    """Run the dvc.yaml commands (`python -m stages.NAME ARGS`) of the stages `names` in order, in
    `project`, as stages.common.run runs them, but in this process: without a new interpreter that
    imports torch and transformers again for each stage (about 20 s a pipeline). Returns what each
    printed; a stage's error line fails the test as SystemExit."""
    import contextlib
    import importlib
    import io
    import shlex

    import yaml

    from stages.common import run

    commands = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    printed = {}
    for name in names:
        python, flag, module, *args = shlex.split(commands[name]["cmd"])
        assert (python, flag) == ("python", "-m"), commands[name]["cmd"]
        out, argv = io.StringIO(), sys.argv
        try:
            sys.argv = [module, *args]
            with contextlib.chdir(project), contextlib.redirect_stdout(out):
                run(importlib.import_module(module).main)
        except BaseException:
            print(out.getvalue())  # what the stage printed before it failed, into the test's report
            raise
        finally:
            sys.argv = argv
        printed[name] = out.getvalue()
    return printed


def stages_run(repro_output):
    """Names of the stages that `dvc repro` actually ran, in order."""
    return re.findall(r"^Running stage '(\w+)'", repro_output, flags=re.MULTILINE)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory, worker_id):
    """A folder shared by every pytest-xdist worker of this session (and a lock to build in it):
    what is expensive to build is built once per session, not once per worker."""
    session_temp = tmp_path_factory.getbasetemp()
    shared = (session_temp if worker_id == "master" else session_temp.parent) / "shared"
    shared.mkdir(exist_ok=True)
    return shared


def build_once(shared_dir, name, build):
    """`build(path)` the first time any worker asks for `name`; every worker gets the same path."""
    from filelock import FileLock

    path = shared_dir / name
    with FileLock(str(shared_dir / f"{name}.lock")):
        if not (shared_dir / f"{name}.done").exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            (shared_dir / f"{name}.done").touch()
    return path


@pytest.fixture(scope="session")
def pairs_csv(shared_dir):
    return build_once(shared_dir, "pairs.csv", write_pairs_csv)


@pytest.fixture(scope="session")
def tiny_bert(shared_dir, pairs_csv):
    return build_once(shared_dir, "tiny-bert", lambda path: write_tiny_bert(path, csv_texts(pairs_csv)))


@pytest.fixture(scope="session")
def tiny_model(shared_dir, pairs_csv):
    """tiny_model(architecture): the folder of a tiny model of tests.tiny.TINY_MODELS, built once."""
    def build(architecture):
        write = TINY_MODELS[architecture]
        return build_once(shared_dir, f"tiny-{architecture}", lambda path: write(path, csv_texts(pairs_csv)))

    return build


@pytest.fixture(scope="session")
def reproduced_project(shared_dir, pairs_csv, tiny_bert):
    """A scratch copy of the project after one full run of the pipeline, recorded by DVC, with its
    results committed. Shared by all tests: run dvc commands that write in a `project` copy, not here.

    The stages run as `dvc repro` would run dvc.yaml's commands, but in this process
    (run_stages_in_process), and `dvc commit` records them as `dvc repro` does, as for a run made
    outside DVC (docs/scale.md): the imports of nine fresh interpreters are the largest part of the
    fixture, which every pipeline test waits for. test_hub's `dvc repro` runs every stage under DVC,
    and test_second_repro_with_nothing_changed_runs_no_stage sees that DVC takes this run as its own."""
    def reproduce(project):
        make_scratch_project(project, pairs_csv, tiny_bert)
        run_stages_in_process(project, STAGES)
        dvc("commit", "--force", cwd=project)
        git("add", "-A", cwd=project)
        git("commit", "-q", "-m", "first run", cwd=project)

    return build_once(shared_dir, "reproduced", reproduce)


def copy_project(source, dest):
    """A copy of a project folder (git history, dvc cache and outputs), without Python's bytecode
    caches: any interpreter that imports stages/ or scorer/ from the shared reproduced project may
    be writing a __pycache__ file there (a temporary file renamed into place) while another worker
    copies it, and a copy must not fail on a file that vanished under it. Nothing tracked lives in
    __pycache__ (.gitignore), so the copy misses nothing git or DVC knows of."""
    shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture
def project(reproduced_project, tmp_path):
    """A private copy of the reproduced project (git history, dvc cache and outputs) to change."""
    return copy_project(reproduced_project, tmp_path / "project")


@pytest.fixture
def fresh_project(tmp_path, pairs_csv, tiny_bert):
    """A scratch copy of the project that has not run yet."""
    return make_scratch_project(tmp_path / "project", pairs_csv, tiny_bert)
