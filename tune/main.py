"""python -m tune: search params.yaml's hyperparameters with Optuna, each trial's folds run as DVC
experiments (docs/tuning.md).

    python -m tune --trials 20                          # the holdout split, results/tune/tune.{json,md}
    python -m tune --trials 20 --folds 5 --study lr     # each trial: 5 folds over queries, their mean
    python -m tune --trials 40 --study lr --storage postgresql://USER:PASSWORD@HOST/DB   # on every machine

--trials is the study's total of complete trials (pruned and failed ones do not count): a rerun
(after Ctrl-C, a failure, or with a larger N) continues the study up to N, and with N already
reached only writes the report. A trial's value is by default the train stage's validation nDCG@10,
so its experiments run split, encode and train only; weak trials are pruned (--pruner).
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import namedtuple
from pathlib import Path

from stages.common import cpu_description
from tune import experiments, pruning, report, space as search_space, storage as storages
from tune.errors import TuneError

DEFAULT_METRICS_FILE = "results/train/metrics.json"
DEFAULT_METRIC = "eval.ndcg@10"  # the last epoch's validation nDCG@10 of the PyTorch model
METRIC_FILE_SUFFIXES = (".json", ".yaml", ".yml")
MAX_RETRIES = 2  # a trial whose worker died is rerun with the same params at most this many times
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

# One --metric: KEY in the metrics file FILE, which dvc.yaml's stage STAGE writes, maximized or
# minimized (DIRECTION); CURVE, the file where dvclive logs KEY per epoch while that stage runs
# (absent for metrics that have none).
Metric = namedtuple("Metric", "file key stage curve direction")
DIRECTIONS = ("maximize", "minimize")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, required=True, metavar="N",
                        help="the study's total of complete trials; a rerun continues up to N")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="k-fold cross-validation over queries: each trial runs K experiments (split.folds=K, "
                             "split.fold=0..K-1), its value the mean of their metric (default: the holdout split)")
    parser.add_argument("--study", default="tune", help="the study's name, and its experiments' prefix (default: %(default)s)")
    parser.add_argument("--storage", metavar="URL", help=f"Optuna storage: sqlite:///PATH (default: {storages.DEFAULT_DB}, "
                        "git-ignored) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE, shared by many machines")
    parser.add_argument("--metric", action="append", metavar="[FILE:]KEY[:maximize|:minimize]",
                        help=f"the value of a trial: KEY in FILE, a metrics file a stage writes "
                             f"(default: {DEFAULT_METRIC} in {DEFAULT_METRICS_FILE}); repeat it for a multi-objective "
                             f"study, whose report gives the Pareto front")
    parser.add_argument("--direction", choices=DIRECTIONS, default="maximize",
                        help="maximize (default) or minimize the metrics that do not say")
    parser.add_argument("--pruner", choices=pruning.PRUNERS, default="median",
                        help="stop weak trials early, after an epoch or a fold: Optuna's MedianPruner (default), "
                             "HyperbandPruner, or none")
    parser.add_argument("--warmup-trials", type=int, default=5, metavar="W",
                        help="median: prune nothing before W trials are complete (default: %(default)s)")
    parser.add_argument("--warmup-epochs", type=int, default=1, metavar="E",
                        help="prune no trial on its first fold's first E epochs (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="trials at once on this machine: one GPU each where there are several, the CPU "
                             "threads divided between them otherwise (default: %(default)s)")
    parser.add_argument("--search-space", default="search_space.yaml", metavar="PATH",
                        help="the search space (default: %(default)s, beside params.yaml)")
    parser.add_argument("--seed", type=int, help="seed Optuna's sampler, for a repeatable sequence of trials")
    parser.add_argument("--timeout", type=float, metavar="MINUTES",
                        help="start no trial after this many minutes (running ones finish); the next run goes on")
    parser.add_argument("--max-failures", type=int, default=5, metavar="M",
                        help="stop when M trials in a row have failed in this run (default: %(default)s)")
    args = parser.parse_args(argv)
    args.metric = args.metric or [DEFAULT_METRIC]
    if args.trials < 0:
        raise TuneError(f"--trials {args.trials}: expected 0 or more")
    if args.folds is not None and args.folds < 2:
        raise TuneError(f"--folds {args.folds}: expected 2 or more (leave it out for the holdout split)")
    if args.jobs < 1:
        raise TuneError(f"--jobs {args.jobs}: expected 1 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise TuneError(f"--timeout {args.timeout}: expected a positive number of minutes")
    if args.warmup_trials < 0 or args.warmup_epochs < 0:
        raise TuneError(f"--warmup-trials {args.warmup_trials} --warmup-epochs {args.warmup_epochs}: expected 0 or more")
    if args.max_failures < 1:
        raise TuneError(f"--max-failures {args.max_failures}: expected 1 or more")
    if not STUDY_NAME.match(args.study) or args.study.endswith(".lock"):
        raise TuneError(f"--study {args.study}: use letters, digits, '.', '_' and '-' (it names experiments and files)")
    return args


def describe_split(folds):
    """--folds as a message says it: `--folds 5`, or the holdout split for none."""
    return "the holdout split" if folds is None else f"--folds {folds}"


def known_settings_differ(known, settings):
    """Whether a study's recorded settings (its user attribute `tune`) differ in what a study keeps."""
    return any(known.get(name) != settings[name] for name in ("folds", "metrics"))


def parse_metric(text, project, direction="maximize"):
    """The Metric of one --metric: FILE:KEY or KEY in the default file, optionally followed by
    :maximize or :minimize (else `direction`), the stage writing FILE, and the file of its per-epoch values."""
    file, key = DEFAULT_METRICS_FILE, text
    head, sep, tail = text.partition(":")
    sep_file = bool(sep and head.endswith(METRIC_FILE_SUFFIXES))
    if sep_file:
        file, key = head, tail
    name, sep, suffix = key.rpartition(":")
    if sep and suffix in DIRECTIONS:
        key, direction = name, suffix
    if not key:
        raise TuneError(f"--metric {text}: no key; expected [FILE:]KEY such as {DEFAULT_METRIC}")
    stage = project.stage_writing(file)
    if stage is None:
        raise TuneError(f"--metric {text}: {file} is not an output of any stage in dvc.yaml")
    workspace_copy = project.root / file
    if workspace_copy.is_file():
        try:
            data = experiments.parse_metrics(workspace_copy.read_text(encoding="utf-8"), file)
        except ValueError:
            data = None
        if isinstance(data, dict) and key not in experiments.flat_keys(data):
            bare = "" if sep_file else (f"; a bare KEY is looked up in {DEFAULT_METRICS_FILE}: give another file's "
                                        f"as FILE:KEY, such as results/eval/metrics.json:fp32.ndcg@10")
            raise TuneError(f"--metric {text}: {experiments.missing_key(key, file, data, experiments.workspace_report(project.root, file))}{bare}")
    return Metric(file, key, stage, pruning.curve_path(file, key), direction)


def parse_metrics(texts, project, direction):
    """The Metrics of every --metric, in order; the same FILE:KEY twice is refused."""
    metrics = [parse_metric(text, project, direction) for text in texts]
    seen = set()
    for text, metric in zip(texts, metrics):
        if (metric.file, metric.key) in seen:
            raise TuneError(f"--metric {text}: {metric.key} in {metric.file} is given twice")
        seen.add((metric.file, metric.key))
    return metrics


def describe_metrics(metrics):
    """The study's objectives as the study records them: [[file, key, direction], ...]."""
    return [[m.file, m.key, m.direction] for m in metrics]


def visible_gpus():
    """Ids of the GPUs this process may use (CUDA_VISIBLE_DEVICES, else nvidia-smi's list), without torch."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", result.stdout, flags=re.MULTILINE)] if result.returncode == 0 else []


def slot_environments(jobs):
    """The environment of each job slot's runs: one GPU each where there are several; with more
    than one job, the CPU's threads divided between them (torch and BLAS read OMP_NUM_THREADS)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = visible_gpus()
    envs = []
    for slot in range(jobs):
        env = dict(os.environ)
        if jobs > 1:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(max(1, cpus // jobs))
            if len(gpus) > 1:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        envs.append(env)
    notes = []
    if jobs > 1:
        notes.append(f"{jobs} jobs: {max(1, cpus // jobs)} CPU thread(s) each" +
                     (f", GPU {', '.join(envs[s]['CUDA_VISIBLE_DEVICES'] for s in range(jobs))}" if len(gpus) > 1 else ""))
        if len(gpus) > 1 and jobs > len(gpus):
            notes.append(f"warning: --jobs {jobs} on {len(gpus)} GPUs: some jobs share a GPU")
        if len(gpus) == 1:
            notes.append(f"warning: --jobs {jobs} on one GPU: the jobs share it")
    return envs, notes


class Tuner:
    def __init__(self, args, project):
        self.args = args
        self.project = project
        self.space = search_space.load(project.root / args.search_space, project.params)
        self.metrics = parse_metrics(args.metric, project, args.direction)
        self.multi = len(self.metrics) > 1  # a multi-objective study: a Pareto front, no pruning
        self.metric = self.metrics[0]
        self.metric_file, self.metric_key = self.metric.file, self.metric.key
        # The stages writing the metrics: each experiment runs them and what they need, nothing after.
        self.targets = list(dict.fromkeys(m.stage for m in self.metrics))
        self.url = storages.storage_url(args.storage, project.root)
        self.host = socket.gethostname()
        machine = cpu_description()
        self.cpu = f"{machine['cpu']}, {machine['cores']} cores, {machine['isa']}"
        self.stop = threading.Event()
        self.interrupted = False
        self.stop_reason = None
        self.fatal = None
        self.failures_in_a_row = 0
        self.runners = []
        self.deadline = None if args.timeout is None else time.monotonic() + 60 * args.timeout
        self.timed_out = False
        self._print = threading.Lock()
        self._count = threading.Lock()

    def say(self, line):
        with self._print:
            print(line, flush=True)

    # -- the study ------------------------------------------------------------------------------
    def open(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # Heartbeats are recorded here by tune's own thread per trial, not by Study.optimize.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        from optuna.trial import TrialState

        self.storage, self.locks = storages.open_storage(self.url, self.rerun_stale)
        objectives = describe_metrics(self.metrics)
        settings = {"metrics": objectives, "metric_file": self.metric_file, "metric": self.metric_key,
                    "folds": self.args.folds, "search_space": search_space.describe(self.space)}
        with self.locks.hold(f"tune-claim:{self.args.study}"):
            study = optuna.create_study(storage=self.storage, study_name=self.args.study,
                                        directions=[m.direction for m in self.metrics], load_if_exists=True)
            known = study.user_attrs.get("tune")
            if known is not None and known_settings_differ(known, settings) and not any(
                    trial.state in (TrialState.COMPLETE, TrialState.RUNNING) for trial in study.trials):
                # Nothing complete or running (a --trials 0 run, or trials that all failed or were
                # pruned): nothing is lost by starting the study again with these settings.
                self.say(f"tune: note: study '{self.args.study}' has no complete trial; it starts again with "
                         f"{describe_split(settings['folds'])} and these metrics")
                if [d.name.lower() for d in study.directions] != [m.direction for m in self.metrics]:
                    optuna.delete_study(study_name=self.args.study, storage=self.storage)
                    study = optuna.create_study(storage=self.storage, study_name=self.args.study,
                                                directions=[m.direction for m in self.metrics])
                    self.enqueue_current_params(study)
                study.set_user_attr("tune", {**settings, "commit": self.project.head})
                known = study.user_attrs["tune"]
            directions = [d.name.lower() for d in study.directions]
            # Studies from before several metrics recorded one metric_file and metric.
            theirs = (known or {}).get("metrics") or ([[known["metric_file"], known["metric"], directions[0]]] if known else None)
            if (theirs or objectives) != objectives or directions != [m.direction for m in self.metrics]:
                shown = " ".join(f"--metric {f}:{k}:{d}" for f, k, d in theirs) if theirs else \
                    f"{len(directions)} objective(s) ({', '.join(directions)})"
                raise TuneError(f"--metric: study '{self.args.study}' was run with {shown}; a study keeps its metrics "
                                f"and their directions (give another --study)")
            if known is None:
                taken = self.project.experiments_named(f"{self.args.study}-")
                if taken and not study.trials:
                    raise TuneError(f"--study {self.args.study}: this repository already has experiments named "
                                    f"{self.args.study}-* ({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}) from an "
                                    f"earlier study of that name; choose another name, or remove them with "
                                    f"`dvc exp remove {' '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}`")
                study.set_user_attr("tune", {**settings, "commit": self.project.head})
                self.enqueue_current_params(study)
            else:
                if known.get("folds") != settings["folds"]:
                    raise TuneError(f"--folds: study '{self.args.study}' was run with {describe_split(known.get('folds'))}; "
                                    f"a study keeps one split once a trial is complete (give another --study)")
                if known.get("search_space") != settings["search_space"]:
                    self.say(f"tune: note: {self.args.search_space} differs from the space study '{self.args.study}' "
                             f"started with; its next trials search the new one")
                if known.get("commit") != self.project.head:
                    self.say(f"tune: note: study '{self.args.study}' started at commit {known.get('commit', '?')[:7]}; "
                             f"this checkout is at {self.project.head[:7]}")
        seed = None if self.args.seed is None else self.args.seed + len(study.trials)
        # constant_liar: trials running on other workers count as middling results, so that workers
        # starting together do not all try the same region.
        study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        # Optuna's pruners take one intermediate value per step: a multi-objective study is not pruned.
        study.pruner = pruning.make_pruner("none" if self.multi else self.args.pruner, self.args.warmup_trials,
                                           self.args.warmup_epochs)
        if self.multi and self.args.pruner != "none":
            self.say(f"tune: note: --pruner {self.args.pruner} applies to one metric; this study has "
                     f"{len(self.metrics)}, so no trial is pruned")
        self.study = study
        return study

    def enqueue_current_params(self, study):
        """A new study's first trial: params.yaml's values of the searched keys (when each is a point
        of its distribution), so the report compares the best trial with what is there now."""
        current = {key: search_space.lookup(self.project.params, key) for key in self.space}
        outside = [key for key, value in current.items() if not search_space.in_space(self.space[key], value)]
        if outside:
            self.say(f"tune: params.yaml's {', '.join(outside)} lie outside the search space; no trial of the current params")
            return
        study.enqueue_trial(current, user_attrs={"current_params": True})

    def rerun_stale(self, study, trial):
        """A running trial whose worker stopped sending heartbeats (killed, machine lost) has been
        failed (the report says why): queue its params again, unless they were retried MAX_RETRIES times
        already, in case they are what kills the worker."""
        retries = trial.user_attrs.get("retries", 0)
        if retries < MAX_RETRIES:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1})
        self.say(f"tune: trial {trial.number} had no heartbeat for {storages.GRACE_S} s: failed"
                 + (", its params queued again" if retries < MAX_RETRIES else f", not queued again after {retries} retries"))

    def claim(self):
        """The next trial to run, or None when the study has its N complete trials (or we stop).
        Under the study's lock: count complete and running trials, and ask for one only when they
        leave room, so workers together never run more than N; wait while others' trials run."""
        import optuna
        from optuna.trial import TrialState

        waiting_said = False
        while not self.stop.is_set():
            if self.deadline is not None and time.monotonic() > self.deadline:
                if not self.timed_out:
                    self.timed_out = True
                    self.say(f"tune: --timeout {self.args.timeout:g} minutes reached: no new trial")
                return None
            with self.locks.hold(f"tune-claim:{self.args.study}"):
                optuna.storages.fail_stale_trials(self.study)
                states = [t.state for t in self.study.get_trials(deepcopy=False)]
                complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
                if complete >= self.args.trials:
                    return None
                if complete + running < self.args.trials:
                    trial = self.study.ask(self.space)
                    self.storage.record_heartbeat(trial._trial_id)
                    trial.set_user_attr("host", self.host)
                    trial.set_user_attr("repo", str(self.project.root))
                    trial.set_user_attr("commit", self.project.head)
                    trial.set_user_attr("cpu", self.cpu)  # a time measured on it means nothing on another
                    return trial
            if not waiting_said:
                self.say(f"tune: {complete} of {self.args.trials} trials complete, {running} running: "
                         f"waiting, in case one fails")
                waiting_said = True
            self.stop.wait(2)
        return None

    # -- one trial ------------------------------------------------------------------------------
    def experiment_name(self, trial, fold):
        return f"{self.args.study}-{trial.number}" + ("" if fold is None else f"-{fold}")

    def run_trial(self, runner, trial):
        """Run the trial's folds, reporting each epoch's value and each fold's running mean to the
        pruner (one metric); returns (TrialState, value, or the values of several metrics, or None)."""
        from optuna.trial import TrialState

        folds = [None] if self.args.folds is None else list(range(self.args.folds))
        overrides = [search_space.override(key, value) for key, value in trial.params.items()]
        shown = ", ".join(f"{key}={value}" for key, value in trial.params.items())
        self.say(f"trial {trial.number}: {shown}")
        names, values = [], []
        for fold in folds:
            name = self.experiment_name(trial, fold)
            if self.stop.is_set():
                return self.interrupted_trial(trial, names, name)
            label = f"trial {trial.number}" + ("" if fold is None else f" fold {fold + 1}/{len(folds)}")
            split = [] if fold is None else [f"split.folds={self.args.folds}", f"split.fold={fold}"]
            log = self.project.root / experiments.LOGS / self.args.study / f"{name}.log"
            trial.set_user_attr("log", str(log.relative_to(self.project.root)))
            epochs = EpochReports(trial, fold, self.metric.key)
            status, output = runner.run(name, self.targets, overrides + split, log,
                                        lambda line, label=label: self.say(f"  {label}: {line}"), self.stop.is_set,
                                        curve=None if self.multi else self.metric.curve, on_curve=epochs.report)
            if epochs.pruned is not None:
                if status == 0:  # it finished before the stop reached it: a complete fold, kept
                    self.project.collect(runner.root, name)
                    names.append(name)
                    trial.set_user_attr("experiments", names)
                return self.pruned(trial, fold, *epochs.pruned)
            if status != 0 and self.stop.is_set():
                return self.interrupted_trial(trial, names, name)
            if status != 0:
                return self.failed(trial, names, name, experiments.error_line(output), log)
            self.project.collect(runner.root, name)
            names.append(name)
            trial.set_user_attr("experiments", names)
            rev = self.project.experiment_rev(name)
            fold_values = []
            for text, metric in zip(self.args.metric, self.metrics):
                value, why, missing = experiments.read_metric(self.project, rev, metric.file, metric.key)
                if value is None:
                    result = self.failed(trial, names, name, f"error: {why}", log)
                    if missing:  # every trial would fail the same way
                        self.halt(TuneError(f"--metric {text}: {why}"))
                    return result
                fold_values.append(value)
            # One number per fold for one metric (as before several), a list per fold for several.
            values.append(fold_values if self.multi else fold_values[0])
            trial.set_user_attr("fold_values", values)
            if fold is not None:
                self.say(f"  {label}: {self.shown_values(fold_values)} ({name})")
            if self.multi:
                continue
            self.report_finished_epochs(trial, epochs, name)
            if fold is not None and fold < len(folds) - 1:
                mean = statistics.fmean(values)
                trial.report(mean, pruning.fold_step(fold))
                if trial.should_prune():
                    return self.pruned(trial, fold, None, mean)
        means = [statistics.fmean(column) for column in zip(*values)] if self.multi else [statistics.fmean(values)]
        with self._count:
            self.failures_in_a_row = 0
        self.study.tell(trial, means if self.multi else means[0])
        if self.multi:
            front = [t.number for t in self.study.best_trials]
            standing = f"Pareto front: trial{'s' if len(front) > 1 else ''} {', '.join(map(str, front))}"
        else:
            best = self.study.best_trial
            standing = f"best: trial {best.number}, {best.value:.4f}"
        self.say(f"trial {trial.number}: {self.shown_values(means)}" + (f" (mean of {len(values)} folds)" if len(values) > 1 else "")
                 + f"; {standing}")
        return TrialState.COMPLETE, means if self.multi else means[0]

    def shown_values(self, values):
        return ", ".join(f"{metric.key} {value:.4f}" for metric, value in zip(self.metrics, values))

    def report_finished_epochs(self, trial, epochs, name):
        """The epochs of a finished fold that the watch missed (the last ones, written as the run
        ended), from the experiment's commit, where dvclive's curve is (cache: false)."""
        if not self.metric.curve:
            return
        try:
            text = self.project.read_file(self.project.experiment_rev(name), self.metric.curve)
        except FileNotFoundError:  # a metric without a per-epoch curve
            return
        epochs.report(text, prune=False)

    def pruned(self, trial, fold, epoch, value):
        """Record the trial as PRUNED, where it stopped (fold: split.fold, None on the holdout split;
        epoch: None when pruned between folds) and its value there; its finished folds stay experiments."""
        from optuna.trial import TrialState

        trial.set_user_attr("pruned", {"fold": fold, "epoch": epoch, "value": value})
        self.study.tell(trial, state=TrialState.PRUNED)
        with self._count:
            self.failures_in_a_row = 0
        self.say(f"trial {trial.number}: pruned {pruning.pruned_where(fold, epoch, self.args.folds)}: "
                 f"{self.metric_key} {value:.4f}" + (" (running mean)" if epoch is None else ""))
        return TrialState.PRUNED, value

    def failed(self, trial, names, name, line, log):
        from optuna.trial import TrialState

        trial.set_user_attr("error", line)
        trial.set_user_attr("failed_experiment", name)
        self.study.tell(trial, state=TrialState.FAIL)
        with self._count:
            self.failures_in_a_row += 1
            stop = self.failures_in_a_row >= self.args.max_failures
        if stop:
            self.halt(TuneError(f"--max-failures {self.args.max_failures}: the last {self.args.max_failures} "
                                f"trials failed; the last: {line}"))
        self.say(f"trial {trial.number}: failed in {name}: {line} (log: {log.relative_to(self.project.root)})")
        return TrialState.FAIL, None

    def interrupted_trial(self, trial, names, name):
        """Ctrl-C: the trial is failed as interrupted and its params queued, so the next run reruns
        it first (its finished folds come back from DVC's run cache in seconds)."""
        from optuna.trial import TrialState

        trial.set_user_attr("error", f"interrupted ({self.stop_reason or 'stopped'}) during {name}")
        self.study.tell(trial, state=TrialState.FAIL)
        self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number,
                                                           "retries": trial.user_attrs.get("retries", 0)})
        self.say(f"trial {trial.number}: interrupted; its params run first next time")
        return TrialState.FAIL, None

    def heartbeat(self, trial, done):
        while not done.wait(storages.HEARTBEAT_S):
            try:
                self.storage.record_heartbeat(trial._trial_id)
            except Exception as err:  # noqa: BLE001 (a lost connection must not kill the trial; the next beat retries)
                self.say(f"tune: warning: heartbeat of trial {trial.number} not recorded: {str(err).splitlines()[0]}")

    def worker(self, runner):
        try:
            while not self.stop.is_set():
                trial = self.claim()
                if trial is None:
                    return
                done = threading.Event()
                beat = threading.Thread(target=self.heartbeat, args=(trial, done), daemon=True)
                beat.start()
                try:
                    self.run_trial(runner, trial)
                except BaseException as err:  # a bug or a lost database: fail the trial, stop the run, say why
                    from optuna.trial import TrialState

                    why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    try:
                        if self.interrupted:
                            self.interrupted_trial(trial, [], "its set-up")
                        else:
                            trial.set_user_attr("error", f"error: tune: {why}")
                            self.study.tell(trial, state=TrialState.FAIL)
                    except Exception:  # noqa: BLE001 (the storage itself may be what failed)
                        pass
                    if not self.interrupted:
                        self.halt(err if isinstance(err, TuneError) else TuneError(f"tune: trial {trial.number}: {why}"))
                finally:
                    done.set()
                    beat.join()
        finally:
            runner.remove()

    # -- the run --------------------------------------------------------------------------------
    def halt(self, error):
        """Stop the run for `error` (the first one wins): the other running trials are interrupted
        and queued again, as on Ctrl-C."""
        with self._count:
            if self.fatal is None:
                self.fatal = error
                self.stop_reason = self.stop_reason or "the run stopped on an error"
        self.stop.set()
        for runner in self.runners:
            runner.interrupt()

    def on_signal(self, signum, frame):
        if self.stop.is_set() and self.interrupted:
            self.say("tune: stopping now: killing the running experiments")
            for runner in self.runners:
                runner.interrupt(kill=True)
            return
        self.interrupted = True
        self.stop_reason = {signal.SIGINT: "Ctrl-C"}.get(signum, signal.Signals(signum).name)
        self.stop.set()
        self.say(f"tune: {signal.Signals(signum).name}: stopping the running experiments "
                 f"(again to kill them); rerun the same command to resume")
        for runner in self.runners:
            runner.interrupt()

    def run(self):
        from optuna.trial import TrialState

        study = self.open()
        counts = lambda: [t.state for t in study.get_trials(deepcopy=False)].count(TrialState.COMPLETE)  # noqa: E731
        self.say(f"tune: study '{self.args.study}' in {storages.shown(self.url)}: {counts()} of {self.args.trials} "
                 f"trials complete; " + ", ".join(f"{m.key} in {m.file} ({m.direction})" for m in self.metrics) + ", "
                 + (f"{self.args.folds} folds" if self.args.folds else "holdout split")
                 + f"; each experiment: dvc exp run --temp {' '.join(self.targets)}")
        envs, notes = slot_environments(self.args.jobs)
        for note in notes:
            self.say(f"tune: {note}")
        experiments.remove_stale_runners(self.project)
        self.runners = [experiments.Runner(self.project, slot, env) for slot, env in enumerate(envs)]
        previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            threads = [threading.Thread(target=self.worker, args=(runner,), daemon=True) for runner in self.runners]
            for thread in threads:
                thread.start()
                time.sleep(0.2)  # stagger the first claims a little
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        paths = report.write(self, study)
        for line in report.summary_lines(self, study, paths):
            self.say(line)
        if self.fatal is not None:
            raise self.fatal
        if self.interrupted:
            return 130
        return 0


class EpochReports:
    """A fold's per-epoch values, reported to its trial as the curve file grows (pruning.epoch_step);
    pruned: (epoch, value) where the pruner stopped it, else None."""

    def __init__(self, trial, fold, key):
        self.trial, self.fold, self.key = trial, fold, key
        self.reported = 0
        self.pruned = None

    def report(self, text, prune=True):
        """Report the epochs not reported yet; True when the pruner says stop (with prune)."""
        values = pruning.curve_values(text, self.key)
        for epoch in range(self.reported + 1, len(values) + 1):
            value = values[epoch - 1]
            self.trial.report(value, pruning.epoch_step(self.fold, epoch))
            self.reported = epoch
            if prune and self.trial.should_prune():
                self.pruned = (epoch, value)
                return True
        return False


def main(argv=None):
    try:
        args = parse_args(argv)
        project = experiments.Project(Path.cwd())
        return Tuner(args, project).run()
    except TuneError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
