"""Trials' folds as DVC experiments, run with `dvc exp run --temp -n NAME STAGE -S key=value ...`
in a private clone of the project per job slot (a "runner"), and brought back into the project's
repository, where `dvc exp show`, `dvc params diff` and `dvc exp apply` see them.

Why a clone: read in DVC 3.67's source (dvc/repo/experiments/queue/base.py, tempdir.py):
- `dvc exp run --temp` stashes the workspace (`git stash`), writes the -S values, commits them to
  a stash ref and restores the workspace: each start rewrites the user's tracked files for a moment.
- the temp queue is one stash ref shared by every `dvc exp run --temp` in a repository ("queue
  length is only 0 or 1"), and each such process runs every entry it finds there, taking them
  without a lock: two at once in one repository may run each other's experiments.
In a clone of its own, each job slot's DVC has its own queue and workspace, and the user's are never
touched. The clone shares the project's DVC cache (and with it the run cache): stages whose params
and inputs did not change are restored from it, not rerun. Uncommitted changes to tracked files go
into every trial, as `dvc exp run` takes them; untracked files do not.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from stages.common import REPORT_FILE, ParamsLoader  # params.yaml as DVC writes it (5e-05 is a float)
from tune.errors import TuneError

RUNNERS = ".dvc/tmp/tune/runners"  # git ignores .dvc/tmp; one folder per running job slot
LOGS = ".dvc/tmp/tune/logs"        # each experiment's full output
TEMP_WORKSPACES = ".dvc/tmp/exps/standalone"  # where DVC 3.67 runs a `dvc exp run --temp` (queue/tempdir.py)
WATCH_S = 0.5                      # how often a running experiment's curve file is read


def dvc_command():
    """This interpreter's DVC: the one installed beside tune, whatever `dvc` is first on PATH."""
    return [sys.executable, "-m", "dvc"]


def git(*args, cwd, input=None, check=True):
    # Its own session: a Ctrl-C meant for tune must not cut a fetch or clone short (tune stops after it).
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, start_new_session=True)
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        raise TuneError(f"git {' '.join(args[:2])}: {message[-1] if message else f'exit status {result.returncode}'}")
    return result.stdout.decode(errors="replace")


def default_sigint():
    """For a child: SIGINT's default action, unblocked, as a shell gives a command (an ignored
    SIGINT would be inherited across exec and the run would not stop)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class Project:
    """The user's DVC project: its root, the commit its experiments start from, its DVC cache."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        for name in ("dvc.yaml", "params.yaml", ".dvc"):
            if not (self.root / name).exists():
                raise TuneError(f"{self.root / name}: not found; run python -m tune in the DVC project's root")
        if not (self.root / ".git").exists():
            raise TuneError(f"{self.root}: not a git repository; DVC experiments need one (git init, commit)")
        result = git("rev-parse", "--verify", "-q", "HEAD", cwd=self.root, check=False)
        if not result.strip():
            raise TuneError(f"{self.root}: no commit yet; experiments start from one (git commit)")
        self.head = result.strip()
        self.dvc_yaml = yaml.safe_load((self.root / "dvc.yaml").read_text(encoding="utf-8")) or {}
        self.params = yaml.load((self.root / "params.yaml").read_text(encoding="utf-8"), Loader=ParamsLoader) or {}
        # The workspace's uncommitted changes to tracked files, as DVC would take them into an experiment.
        self.diff = subprocess.run(["git", "diff", "--binary", "HEAD"], cwd=self.root, capture_output=True,
                                   check=True).stdout
        self._cache_dir = None
        self._fetch = threading.Lock()

    @property
    def cache_dir(self):
        """The project's DVC cache, as `dvc cache dir` says (read in this process: a dvc command costs a second)."""
        if self._cache_dir is None:
            from dvc.config import Config, ConfigError

            try:
                configured = Config(dvc_dir=str(self.root / ".dvc"))["cache"].get("dir")
            except ConfigError as err:
                raise TuneError(f"{self.root / '.dvc'}: {err}") from None
            self._cache_dir = str(configured or self.root / ".dvc" / "cache")
        return self._cache_dir

    def stage_writing(self, path):
        """The dvc.yaml stage whose outputs (outs, metrics, plots) hold `path`, or None."""
        path = path.strip("/")
        for name, stage in (self.dvc_yaml.get("stages") or {}).items():
            for field in ("outs", "metrics", "plots"):
                for entry in stage.get(field) or []:
                    out = str(next(iter(entry)) if isinstance(entry, dict) else entry).strip("/")
                    if path == out or path.startswith(out + "/"):
                        return name
        return None

    def experiment_ref(self, name):
        return f"refs/exps/{self.head[:2]}/{self.head[2:]}/{name}"

    def experiment_rev(self, name):
        """The commit of experiment `name` on this project's baseline, or None."""
        return git("rev-parse", "--verify", "-q", self.experiment_ref(name), cwd=self.root, check=False).strip() or None

    def experiments_named(self, prefix):
        """Names of this repository's experiments (any baseline) that start with `prefix`."""
        refs = git("for-each-ref", "--format=%(refname)", "refs/exps/", cwd=self.root).split()
        return sorted({ref.rsplit("/", 1)[1] for ref in refs if ref.count("/") == 4 and ref.rsplit("/", 1)[1].startswith(prefix)})

    def collect(self, runner_root, name):
        """Bring experiment `name` from a runner into the project's repository (never over an
        existing experiment of that name)."""
        ref = self.experiment_ref(name)
        with self._fetch:
            git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(runner_root), f"{ref}:{ref}", cwd=self.root)

    def read_file(self, rev, path):
        """`path` as committed in `rev` (a git-tracked output: metrics files have cache: false), or,
        for an output DVC caches, through DVC's API."""
        result = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=self.root, capture_output=True)
        if result.returncode == 0:
            return result.stdout.decode("utf-8")
        import dvc.api

        try:
            return dvc.api.read(path, repo=str(self.root), rev=rev)
        except Exception as err:  # noqa: BLE001 (DVC raises many kinds; the trial records which)
            raise FileNotFoundError(f"{path}: not in experiment commit {rev[:7]} ({type(err).__name__}: {err})") from None


def error_line(output):
    """The line that says why a run failed: a stage's own `error: ...` line, else DVC's `ERROR: ...`
    (a stage killed by a signal: `... exited with -9`), else the last line."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()]
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[-1] if prefix == "error: " else found[0]
    return lines[-1] if lines else "no output"


class Runner:
    """One job slot: a clone of the project under .dvc/tmp/tune/runners/, sharing its DVC cache."""

    def __init__(self, project, slot, env):
        self.project = project
        self.env = env
        self.root = project.root / RUNNERS / f"{os.getpid()}-{slot}"
        self.process = None
        self.running_since = None  # when the target stage started: _watch reads curves written since
        self._made = False

    def make(self):
        if self._made:
            return
        root, project = self.root, self.project
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "--quiet", "--local", "--no-checkout", str(project.root), str(root), cwd=project.root)
        git("checkout", "--quiet", "--detach", project.head, cwd=root)
        for line in git("config", "--local", "--get-regexp", r"^user\.", cwd=project.root, check=False).splitlines():
            key, _, value = line.partition(" ")
            git("config", "--local", key, value, cwd=root)
        if project.diff:
            git("apply", "--binary", "--whitespace=nowarn", "-", cwd=root, input=project.diff)
        # The project's local DVC config (remotes' credentials, ...) and its cache, as DVC's own temp
        # runs get them (`dvc config --local cache.dir`, written here without a second dvc process).
        from configobj import ConfigObj

        local_config = project.root / ".dvc" / "config.local"
        if local_config.exists():
            shutil.copyfile(local_config, root / ".dvc" / "config.local")
        config = ConfigObj(str(root / ".dvc" / "config.local"))
        config.setdefault("cache", {})["dir"] = project.cache_dir
        config.write()
        self._made = True

    def run(self, name, targets, overrides, log_path, progress, stopping=lambda: False, curve=None, on_curve=None):
        """`dvc exp run --temp -n name TARGET... -S ...` here; its output goes to log_path, and each
        stage it starts or skips to progress(line). Returns (exit status, output). stopping(): whether
        a Ctrl-C came before the run started, which then gets it at once. While the last target runs,
        on_curve(text) gets the file `curve` (a path in the experiment's workspace) each time it
        changes; when it returns True, the run is stopped as by Ctrl-C."""
        self.make()
        running = threading.Event()
        finished = threading.Event()
        watcher = None
        if curve and on_curve:
            watcher = threading.Thread(target=self._watch, args=(curve, on_curve, running, finished), daemon=True)
            watcher.start()
        command = [*dvc_command(), "exp", "run", "--temp", "-n", name, *targets,
                   *(arg for item in overrides for arg in ("-S", item))]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        chunks = []
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            # Its own session: a Ctrl-C reaches tune only, which passes one SIGINT on to the run's group.
            self.process = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_sigint)
            if stopping():
                self.interrupt()
            for raw in self.process.stdout:
                text = raw.decode("utf-8", errors="replace")
                chunks.append(text)
                log.write(text)
                log.flush()
                for line in re.split(r"[\r\n]+", text):
                    match = re.match(r"(Running stage '[^']+'|Stage '[^']+' didn't change, skipping|"
                                     r"Stage '[^']+' is cached - skipping run)", line.strip())
                    if match:
                        progress(match.group(1))
                        if match.group(1) == f"Running stage '{targets[-1]}'":
                            self.running_since = time.time()
                            running.set()
            status = self.process.wait()
        finished.set()
        if watcher is not None:
            watcher.join()
        self.process = None
        return status, "".join(chunks)

    def _watch(self, curve, on_curve, running, finished):
        """Poll `curve` in the experiment's temporary workspace (DVC's --temp runs in
        .dvc/tmp/exps/standalone/tmpXXXX of this clone, one at a time) while the target stage runs.
        Train's outputs persist (dvc.yaml): DVC leaves the baseline's curve in the workspace until the
        stage rewrites it, so a file older than the stage's start is the baseline's, not this run's."""
        last = None
        while not finished.wait(WATCH_S):
            if not running.is_set():
                continue
            for path in (self.root / TEMP_WORKSPACES).glob(f"*/{curve}"):
                try:
                    if path.stat().st_mtime < self.running_since:
                        continue
                    text = path.read_text(encoding="utf-8")
                except OSError:  # not written yet, or removed with the workspace
                    continue
                if text != last:
                    last = text
                    if on_curve(text):
                        self.interrupt()
                        return

    def interrupt(self, kill=False):
        """Pass a Ctrl-C (or, with kill, SIGKILL) to the running experiment and what it runs."""
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGINT)
            except ProcessLookupError:
                pass

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale_runners(project):
    """Runner folders of tune processes that no longer exist (killed without cleaning up)."""
    folder = project.root / RUNNERS
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_metric(project, rev, path, key):
    """The number at dotted `key` in the JSON or YAML file `path` of commit `rev`: (value, None, False),
    or (None, why, missing): missing when the file or key is not there (every trial would fail the
    same way), not when the value is not a number (null: undefined on this fold)."""
    try:
        text = project.read_file(rev, path)
    except FileNotFoundError as err:
        return None, str(err), True
    data = parse_metrics(text, path)
    value = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None, missing_key(key, path, data, committed_report(project, rev, path)), True
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{key} is {json.dumps(value)} in {path}, not a number", False
    return float(value), None, False


def parse_metrics(text, path):
    """A metrics file's content: JSON for .json, else YAML, as DVC reads them."""
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def missing_key(key, path, data, report=None):
    """Why `key` is not in the metrics file `path`; given the content of the report beside it (report_beside),
    where the key moved when the report has it: a stage's metrics are its headline numbers, its report
    holds every figure (docs/metrics.md)."""
    moved = report_beside(path)
    if isinstance(report, dict) and key in flat_keys(report):
        return (f"{key} is no longer in {path}: it moved to {moved}, the report beside it (every figure the stage "
                f"measured; docs/metrics.md); use --metric {moved}:{key}")
    return f"{key} is not in {path} (its keys: {', '.join(sorted(flat_keys(data)))})"


def report_beside(path):
    """The stage report beside the metrics file `path` (stages.common.report_path), or None for a report itself."""
    name = path.rsplit("/", 1)[-1]
    return None if name == REPORT_FILE else path[:len(path) - len(name)] + REPORT_FILE


def read_report(read, path):
    """The parsed report beside `path`, `read(report path)` giving its text; None when there is none."""
    moved = report_beside(path)
    try:
        return json.loads(read(moved)) if moved else None
    except (FileNotFoundError, ValueError):
        return None


def committed_report(project, rev, path):
    return read_report(lambda report: project.read_file(rev, report), path)


def workspace_report(root, path):
    return read_report(lambda report: (Path(root) / report).read_text(encoding="utf-8"), path)


def flat_keys(data, prefix=""):
    if not isinstance(data, dict):
        return [prefix.rstrip(".")] if prefix else []
    keys = []
    for key, value in data.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys
