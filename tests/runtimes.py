"""Throwaway environments that hold one onnxruntime release each, for tests/test_runtimes.py:
a venv per onnxruntime (Python) release, an npm folder per onnxruntime-node or onnxruntime-web
(wasm, run in Node.js) release, and one for the Node.js client in clients/node.

They are built once from the package registries into RELEVANCE_RUNTIMES_CACHE (default
~/.cache/relevance-runtimes), each in a temporary folder renamed into place when complete, under a
file lock, so an interrupted build leaves nothing half-made to be reused, concurrent builders never
remove each other's environments, and reruns on the machine are fast.

Each runtime is fed pre-tokenized batches as JSON and answers the logits as JSON, so the tests
compare numbers only. Which runtimes run is chosen by the environment variable RUNTIMES:
    unset or ""   the oldest and the newest of each kind (CI)
    all           every release in MATRIX
    NAME,NAME...  those runtimes, e.g. RUNTIMES=python-1.16.3,web-1.25.1 (releases outside MATRIX too)
"""
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = PROJECT_ROOT / "clients" / "node"
CACHE = Path(os.environ.get("RELEVANCE_RUNTIMES_CACHE") or Path.home() / ".cache" / "relevance-runtimes")
COMPLETE = ".complete"  # written last inside an environment; one without it is rebuilt
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300

# The pinned onnxruntime of requirements.txt (this interpreter's) and the client's onnxruntime-node.
PYTHON_PINNED = importlib.metadata.version("onnxruntime")
NODE_CLIENT_PINNED = json.loads((NODE_CLIENT / "package.json").read_text())["dependencies"]["onnxruntime-node"]

# Oldest first: the newest patch of each minor release. The oldest are the oldest releases supported:
# onnxruntime 1.17, onnxruntime-node 1.21.0, onnxruntime-web 1.22.0. (onnxruntime 1.15.0 to 1.16.3
# with numpy<2 load and match the opset-18 / IR-8 model too; 1.14 has no wheels for Python 3.11.)
MATRIX = {
    "python": ["1.17.3", "1.18.1", "1.19.2", "1.20.1", "1.21.1", "1.22.1", "1.23.2", "1.24.4", "1.25.1",
               "1.26.0", "1.27.0", "1.28.0", "1.29.0", "1.30.0", "1.31.1", PYTHON_PINNED],
    "node": ["1.21.0", "1.22.0", "1.23.2", "1.24.3", "1.25.1", "1.26.0", "1.27.0", "1.29.0", NODE_CLIENT_PINNED],
    "web": ["1.22.0", "1.23.2", "1.24.3", "1.25.1", "1.26.0", "1.27.0", "1.29.0", "1.30.0"],
}
NPM_PACKAGE = {"node": "onnxruntime-node", "web": "onnxruntime-web"}


@dataclass(frozen=True)
class Runtime:
    kind: str  # python, node or web
    version: str

    @property
    def name(self):
        return f"{self.kind}-{self.version}"

    @classmethod
    def parse(cls, name):
        kind, _, version = name.strip().partition("-")
        if kind not in MATRIX or not version:
            raise ValueError(f"RUNTIMES: {name!r} is not KIND-VERSION with KIND one of {', '.join(MATRIX)}")
        return cls(kind, version)


def selected_runtimes(choice=None):
    """The runtimes that RUNTIMES (or `choice`) asks for; see the module docstring."""
    choice = (os.environ.get("RUNTIMES", "") if choice is None else choice).strip()
    if choice == "all":
        versions = {kind: list(dict.fromkeys(releases)) for kind, releases in MATRIX.items()}
    elif not choice:
        versions = {kind: list(dict.fromkeys([releases[0], releases[-1]])) for kind, releases in MATRIX.items()}
    else:
        return [Runtime.parse(name) for name in choice.split(",") if name.strip()]
    return [Runtime(kind, version) for kind, releases in versions.items() for version in releases]


def run(args, cwd=None, timeout=RUN_TIMEOUT_S, env=None):
    """Run a command; on failure raise with its exact output, so a registry error is shown as it came."""
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                           f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def cached(name, populate):
    """CACHE/name, made by populate(folder) in a temporary folder and renamed into place when
    complete. Builds of one name take turns under a file lock (pytest-xdist workers, parallel runs),
    so the second builder finds the first one's environment done and uses it; nothing complete is
    ever deleted, and an interrupted build leaves only a temporary folder, never a half-made target."""
    from filelock import FileLock

    target = CACHE / name
    if (target / COMPLETE).exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"{name}.lock")):
        if (target / COMPLETE).exists():  # built by whoever held the lock before
            return target
        for stale in CACHE.glob(f".{name}.*"):  # left by a killed build over an hour ago
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # not made by cached() (no COMPLETE inside), so nobody uses it: build it again
            shutil.rmtree(target)
        building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=CACHE))
        try:
            populate(building)
            (building / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
            try:
                building.rename(target)  # target is absent: the rename publishes it whole, at once
            except OSError:  # unless a builder outside the lock (an older checkout) got there first
                if not (target / COMPLETE).exists():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return target


def python_env(version):
    """An interpreter with onnxruntime==version: this one for the pinned release, else a cached venv."""
    if version == PYTHON_PINNED:
        return Path(sys.executable)
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"

    def populate(folder):
        run([sys.executable, "-m", "venv", folder], timeout=INSTALL_TIMEOUT_S)
        # Releases before 1.19 are built against numpy 1 and fail to import beside numpy 2.
        numpy = "numpy<2" if tuple(map(int, version.split(".")[:2])) < (1, 19) else "numpy"
        run([folder / "bin" / "python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q",
             f"onnxruntime=={version}", numpy], timeout=INSTALL_TIMEOUT_S)

    # A venv runs from wherever it is moved to when called as bin/python, which is all the tests do.
    return cached(f"{python}-onnxruntime-{version}", populate) / "bin" / "python"


def npm(*args, cwd):
    # --ignore-scripts: onnxruntime-node's install script downloads CUDA files (and fails offline);
    # its bundled CPU binary is all that is needed.
    return run(["npm", *args, "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd,
               timeout=INSTALL_TIMEOUT_S)


def node_client_env():
    """node_modules for clients/node, installed with `npm ci` from its package-lock.json."""
    manifests = [NODE_CLIENT / "package.json", NODE_CLIENT / "package-lock.json"]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in manifests)).hexdigest()[:12]

    def populate(folder):
        for path in manifests:
            shutil.copyfile(path, folder / path.name)
        npm("ci", cwd=folder)

    return cached(f"node-client-{digest}", populate)


def npm_env(package, version):
    """A folder whose node_modules holds package@version (the client's, when it pins that release)."""
    if package == "onnxruntime-node" and version == NODE_CLIENT_PINNED:
        return node_client_env()

    def populate(folder):
        (folder / "package.json").write_text(json.dumps({"private": True, "dependencies": {package: version}}))
        npm("install", cwd=folder)

    return cached(f"{package}-{version}", populate)


# Each runner reads {"output": NAME, "cases": [{"model": PATH, "feeds": {INPUT: {"dims", "data"}}}]}
# and prints {"version": RELEASE, "logits": [[flat logits of each case]]}; sessions are made once per model.
PYTHON_RUNNER = """\
import json, sys
import numpy as np
import onnxruntime

spec = json.load(open(sys.argv[1]))
sessions, logits = {}, []
for case in spec["cases"]:
    if case["model"] not in sessions:
        sessions[case["model"]] = onnxruntime.InferenceSession(case["model"], providers=["CPUExecutionProvider"])
    feeds = {name: np.array(feed["data"], dtype=np.int64).reshape(feed["dims"]) for name, feed in case["feeds"].items()}
    logits.append(sessions[case["model"]].run([spec["output"]], feeds)[0].ravel().tolist())
print(json.dumps({"version": onnxruntime.__version__, "logits": logits}))
"""

JS_RUNNER = """\
const fs = require('fs');
const path = require('path');
const [pkg, specPath] = process.argv.slice(2);
const ort = require(pkg);
if (pkg === 'onnxruntime-web') ort.env.wasm.numThreads = 1;  // no worker threads in Node.js
(async () => {
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const sessions = {};
  const logits = [];
  for (const c of spec.cases) {
    sessions[c.model] ??= await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(c.model)));
    const feeds = {};
    for (const [name, { dims, data }] of Object.entries(c.feeds)) {
      feeds[name] = new ort.Tensor('int64', BigInt64Array.from(data, BigInt), dims);
    }
    logits.push(Array.from((await sessions[c.model].run(feeds))[spec.output].data));
  }
  const version = JSON.parse(fs.readFileSync(path.join(process.env.NODE_PATH, pkg, 'package.json'), 'utf8')).version;
  console.log(JSON.stringify({ version, logits }));
})().catch((error) => { console.error(error); process.exit(1); });
"""


def feeds_spec(models, batches, output):
    """The runners' input: every model on every batch ({input name: int64 array})."""
    return {"output": output, "cases": [
        {"model": str(model), "feeds": {name: {"dims": list(array.shape), "data": array.ravel().tolist()}
                                        for name, array in batch.items()}}
        for model in models for batch in batches]}


def run_logits(runtime, spec, workdir):
    """Build (or reuse) the runtime's environment, run `spec` there; returns (release, [logits per case])."""
    workdir = Path(workdir)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    if runtime.kind == "python":
        runner = workdir / "runner.py"
        runner.write_text(PYTHON_RUNNER)
        # -I: nothing from this repository or the user's site-packages gets imported by accident.
        result = run([python_env(runtime.version), "-I", runner, spec_path], cwd=workdir)
    else:
        package = NPM_PACKAGE[runtime.kind]
        runner = workdir / "runner.js"
        runner.write_text(JS_RUNNER)
        node_modules = npm_env(package, runtime.version) / "node_modules"
        result = run(["node", runner, package, spec_path], cwd=workdir, env={"NODE_PATH": str(node_modules)})
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["version"], answer["logits"]
