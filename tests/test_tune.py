"""python -m tune: Optuna studies whose trials' folds are real `dvc exp run` experiments, with the
real dvc CLI in scratch git repositories, Optuna's real SQLite storage and a real PostgreSQL server.

Most trials here search split params and are valued by a split metric (val_pairs in
results/split/metrics.json), so each experiment runs the download and split stages only, a few
seconds each: what is tested is how tune runs, records, resumes, prunes between folds and shares
trials, which does not depend on the stage (a training experiment costs ~10 s of CPU, torch's import
alone 5). One test trains, with the default metric (train's validation nDCG@10), to prune within
epochs. The CSV's queries have different numbers of titles, so a fold's val_pairs depends on
split.seed and the folds' values differ.
"""
import csv
import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import dvc_experiments, git, pipeline_env, require_tool, run_cli
from tests.tiny import PROJECT_ROOT, make_scratch_project, set_params

SPACE = """\
split.seed: {type: int, low: 0, high: 1000}
split.conflicting_labels: {type: categorical, choices: [relevant, drop, error]}
"""
METRIC = ["--metric", "results/split/metrics.json:val_pairs", "--search-space", "space.yaml"]
SEED = "0"  # with it, the study's second trial (the sampler's first) passes, with folds of different values, and so
# does the second run's first trial, the one interrupted


def write_csv(path):
    """12 queries with 3 to 14 titles each, half relevant, and one (query, title) pair labelled both
    ways, which split.conflicting_labels: error refuses."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "title", "label"])
        for q in range(12):
            for t in range(3 + q):
                writer.writerow([f"query {q} about topic {q % 4}", f"title {t} of query {q}", t % 2])
        writer.writerow(["query 0 about topic 0", "title 0 of query 0", 1])  # labelled 0 above
    return path


def tune_project(dest, csv_path, model_dir, space=SPACE):
    """A scratch project with tune/ and a split-only search space committed, as a user's repository would have them."""
    project = make_scratch_project(dest, csv_path, model_dir)
    shutil.copytree(PROJECT_ROOT / "tune", project / "tune", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "space.yaml").write_text(space)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "tune", cwd=project)
    return project


def tune(project, *args, check=True):
    return run_cli([sys.executable, "-m", "tune", *args], cwd=project, check=check)


def start_tune(project, *args, log):
    """tune in the background, with SIGINT's default action (an ignored SIGINT would be inherited)."""
    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    return subprocess.Popen([sys.executable, "-m", "tune", *args], cwd=project, env=pipeline_env(), stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=default_sigint)


def study_report(project, study):
    return json.loads((project / "results/tune" / f"{study}.json").read_text())


def by_state(report, state):
    return [t for t in report["trials"] if t["state"] == state]


def wait_for_line(path, text, process, timeout=120):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"tune ended before printing {text!r}:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{path.read_text()}"
        time.sleep(0.05)


@pytest.fixture
def csv_path(tmp_path):
    return write_csv(tmp_path / "pairs.csv")


def test_bad_input_stops_with_one_line_naming_it(tmp_path, csv_path, tiny_bert):
    project = tune_project(tmp_path / "project", csv_path, tiny_bert)
    # A previous run's split metrics in the workspace: --metric is checked against them before anything runs.
    (project / "results/split").mkdir(parents=True)
    (project / "results/split/metrics.json").write_text(json.dumps({"val_pairs": 10, "train_pairs": 30}))
    (project / "results/train").mkdir(parents=True)
    (project / "results/train/metrics.json").write_text(json.dumps({"eval": {"ndcg@10": 0.5}}))
    # ... and train's report: a figure that is no longer a metric is found there.
    (project / "results/train/report.json").write_text(json.dumps({"eval": {"ndcg@10": 0.5}, "train": {"runtime": 2.5}}))
    cases = [("search_space.yaml", "train.learning_rte: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n", [],
              "error: {space}: train.learning_rte: not a key of params.yaml"),
             ("search_space.yaml", "train.epochs: {type: normal, low: 1, high: 5}\n", [],
              "error: {space}: train.epochs: unknown distribution type 'normal'"),
             ("space.yaml", None, ["--metric", "eval.ndgc@10"],
              "error: --metric eval.ndgc@10: eval.ndgc@10 is not in results/train/metrics.json (its keys: eval.ndcg@10); "
              "a bare KEY is looked up in results/train/metrics.json: give another file's as FILE:KEY"),
             ("space.yaml", None, ["--metric", "results/split/metrics.json:val_pears"],
              "error: --metric results/split/metrics.json:val_pears: val_pears is not in results/split/metrics.json"),
             ("space.yaml", None, ["--metric", "results/train/metrics.json:train.runtime"],
              "error: --metric results/train/metrics.json:train.runtime: train.runtime is no longer in "
              "results/train/metrics.json: it moved to results/train/report.json, the report beside it (every figure the "
              "stage measured; docs/metrics.md); use --metric results/train/report.json:train.runtime")]
    printed = []
    for name, text, extra, expected in cases:
        if text is not None:
            (project / name).write_text(text)
        result = tune(project, "--trials", "1", "--search-space", name, *extra, check=False)
        printed.append(result.stderr.strip())
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(expected.format(space=project / name)), result.stderr
    assert not (project / "results/tune/studies.db").exists(), "bad input starts no study"
    assert_documented_errors_are_real("error: .../search_space.yaml", printed)
    assert_documented_errors_are_real("error: --metric eval.", printed)
    assert_documented_errors_are_real("error: --metric results/train/", printed)


def test_a_float_below_1e_4_set_by_dvc_reaches_the_stages_as_a_number(tmp_path, monkeypatch):
    """`dvc exp run -S` writes 3.1e-05 as YAML 1.2 does, which PyYAML alone reads as a string (half of
    the default learning-rate range lies below 1e-4)."""
    from dvc.utils.hydra import apply_overrides

    from stages.common import load_params
    from tune.space import override

    (tmp_path / "params.yaml").write_text("train:\n  learning_rate: 5.0e-5\n")
    apply_overrides(str(tmp_path / "params.yaml"), [override("train.learning_rate", 3.1e-05)])  # as dvc exp run -S
    assert "learning_rate: 3.1e-05" in (tmp_path / "params.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    assert load_params("train")["learning_rate"] == 3.1e-05


def test_a_study_runs_folds_as_experiments_survives_a_failure_and_resumes_after_ctrl_c(tmp_path, csv_path, tiny_bert):
    project = tune_project(tmp_path / "project", csv_path, tiny_bert)
    # params.yaml's values, the study's first trial, refuse the CSV's conflicting pair: that trial fails.
    set_params(project, {"split": {"conflicting_labels": "error"}})
    git("commit", "-q", "-am", "refuse conflicting labels", cwd=project)
    common = ["--study", "cv", "--folds", "2", "--seed", SEED, *METRIC]

    tune(project, "--trials", "1", *common)
    report = study_report(project, "cv")
    (complete,), (failed,) = by_state(report, "COMPLETE"), by_state(report, "FAIL")
    # The failing trial is recorded with its stage's error line, and the study went on past it.
    assert failed["params"] == {"split.seed": 42, "split.conflicting_labels": "error"}, "the first trial is params.yaml's"
    assert failed["error"].startswith("error: data/raw/pairs.csv: rows 2 and 104 label the same pair"), failed["error"]
    assert failed["number"] < complete["number"]

    # 2 folds: 2 experiments, the trial's value the mean of its folds' own metric.
    shown = dvc_experiments(project, "results/split/metrics.json")
    assert sorted(shown) == complete["experiments"] == [f"cv-{complete['number']}-0", f"cv-{complete['number']}-1"]
    params = [shown[name][0]["split"] for name in complete["experiments"]]
    assert [(p["folds"], p["fold"]) for p in params] == [(2, 0), (2, 1)]
    assert all(p["seed"] == complete["params"]["split.seed"] for p in params)
    values = [shown[name][1]["val_pairs"] for name in complete["experiments"]]
    assert complete["value"] == pytest.approx(statistics.fmean(values))
    assert len(set(values)) > 1, "the folds' values should differ, or the mean tells nothing"
    assert report["best"]["number"] == complete["number"]
    md = (project / "results/tune/cv.md").read_text()
    assert f"dvc exp apply cv-{complete['number']}-0" in md
    assert (project / "results/tune/cv-history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Ctrl-C during the next run's first experiment: a clean stop, the trial failed as interrupted.
    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        run = start_tune(project, "--trials", "2", *common, log=log)
        wait_for_line(log_path, "fold 1/2: Running stage", run)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130, log_path.read_text()
    report = study_report(project, "cv")
    (interrupted,) = [t for t in report["trials"] if (t["error"] or "").startswith("interrupted")]
    assert len(by_state(report, "COMPLETE")) == 1
    assert not by_state(report, "RUNNING")
    assert not list((project / ".dvc/tmp/tune/runners").iterdir()), "the run's clone is removed"

    (queued,) = by_state(report, "WAITING")
    assert queued["params"] == interrupted["params"]

    # The rerun adds exactly one trial: the interrupted one's params, run again.
    ran_before = [t["number"] for t in report["trials"] if t["state"] != "WAITING"]
    tune(project, "--trials", "2", *common)
    report = study_report(project, "cv")
    (rerun,) = [t for t in report["trials"] if t["number"] not in ran_before]
    assert rerun["number"] == queued["number"] and rerun["state"] == "COMPLETE"
    assert rerun["params"] == interrupted["params"] and rerun["retry_of"] == interrupted["number"]
    assert len(by_state(report, "COMPLETE")) == 2
    # Every experiment in the repository is one that a trial lists, and every listed one is there.
    listed = [name for t in report["trials"] for name in t["experiments"]]
    assert sorted(dvc_experiments(project, "results/split/metrics.json")) == sorted(listed) and len(listed) == len(set(listed))
    # With the study complete, a rerun runs nothing and writes the report again.
    (project / "results/tune/cv.json").unlink()
    assert "Running stage" not in tune(project, "--trials", "2", *common).stdout
    assert study_report(project, "cv")["trials"] == report["trials"]


def postgres_bin():
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own in a temporary folder, listening on 127.0.0.1; yields its URL.
    The server refuses to run as root: as root, it runs as the `postgres` user. Its port is picked at
    random and the start retried on another when that one is taken (no free-port probe to race)."""
    bindir = postgres_bin()
    require_tool(bindir is not None, "initdb not found (Debian: apt-get install postgresql)")
    as_user = []
    folder = Path(tempfile.mkdtemp(prefix="tune-postgres-"))  # not under pytest's root-only tmp_path
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        for _ in range(5):
            port = random.randrange(20000, 60000)
            options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -F"
            started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                      "-o", options, "start"], capture_output=True, text=True)
            if started.returncode == 0:
                break
            if "already in use" not in log.read_text():
                raise AssertionError(f"pg_ctl start failed:\n{started.stdout}{started.stderr}\n{log.read_text()}")
        else:
            raise AssertionError(f"no free port in 5 tries:\n{log.read_text()}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# Opens tune's storage on each URL given at the time given after it, in lockstep with another process.
OPEN_AT = """
import sys, time
from tune.storage import open_storage
for url, at in zip(sys.argv[1::2], sys.argv[2::2]):
    time.sleep(max(0.0, float(at) - time.time()))
    open_storage(url, None)
"""


def test_two_workers_in_two_clones_share_one_postgresql_study_and_prune_between_folds(tmp_path, csv_path, tiny_bert, postgres):
    # Two processes that create Optuna's schema in a fresh database at the same instant: without a lock,
    # one died in 4 of 6 tries here (duplicate key ... "pg_type_typname_nsp_index", or "studies" already exists).
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as connection:
        for i in range(3):
            connection.execute(f"CREATE DATABASE fresh{i}")
    at = time.time() + 5  # after both have imported Optuna
    args = [arg for i in range(3) for arg in (postgres.rsplit("/", 1)[0] + f"/fresh{i}", str(at + i))]
    openers = [subprocess.Popen([sys.executable, "-c", OPEN_AT, *args], cwd=PROJECT_ROOT, env=pipeline_env(),
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    failures = [opener.communicate(timeout=120)[1] for opener in openers if opener.wait(timeout=120) != 0]
    assert not failures, failures

    first = tune_project(tmp_path / "first", csv_path, tiny_bert, space=SPACE.replace(", error]", "]"))
    second = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)  # another machine's checkout
    args = ["--study", "shared", "--storage", postgres, "--folds", "2", "--warmup-trials", "1", *METRIC]
    # The study's first trial, params.yaml's values (split.seed 42), on the first machine alone.
    tune(first, "--trials", "1", *args)
    # Queued for the workers: a trial whose first fold holds fewer validation pairs than the first
    # trial's (pruned after it), then one with more.
    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres)
    study.enqueue_trial({"split.seed": 408, "split.conflicting_labels": "drop"})
    study.enqueue_trial({"split.seed": 549, "split.conflicting_labels": "drop"})
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with open(logs[0], "w") as log0, open(logs[1], "w") as log1:
        workers = [start_tune(first, "--trials", "2", *args, log=log0), start_tune(second, "--trials", "2", *args, log=log1)]
        codes = [worker.wait(timeout=240) for worker in workers]
    assert codes == [0, 0], "\n".join(path.read_text() for path in logs)

    report = study_report(first, "shared")
    assert [(t["number"], t["state"]) for t in report["trials"]] == [(0, "COMPLETE"), (1, "PRUNED"), (2, "COMPLETE")]
    # No trial lost or repeated: each trial's experiments are in the clone that ran it, and only there.
    ran = {clone.resolve(): dvc_experiments(clone, "results/split/metrics.json") for clone in (first, second)}
    assert not set(ran[first.resolve()]) & set(ran[second.resolve()])
    assert set(ran[first.resolve()]) | set(ran[second.resolve()]) == {"shared-0-0", "shared-0-1", "shared-1-0", "shared-2-0", "shared-2-1"}
    shown = {**ran[first.resolve()], **ran[second.resolve()]}
    for trial in report["trials"]:
        assert set(trial["experiments"]) <= set(ran[Path(trial["repo"]).resolve()]), trial
    # Pruned after its first fold (the running mean, then that fold's value, below the first trial's);
    # the fold it finished stays an experiment; it does not count toward --trials.
    pruned = report["trials"][1]
    assert pruned["experiments"] == ["shared-1-0"] and pruned["fold_values"] == [shown["shared-1-0"][1]["val_pairs"]]
    assert pruned["pruned"] == {"fold": 0, "epoch": None, "value": pruned["fold_values"][0]}
    assert pruned["pruned"]["value"] < report["trials"][0]["fold_values"][0]
    assert report["complete"] == 2 and report["pruned"] == 1
    assert study_report(second, "shared")["trials"] == report["trials"]


def cache_objects(project):
    return {str(path.relative_to(project / ".dvc/cache")) for path in (project / ".dvc/cache").rglob("*") if path.is_file()}


def locked_objects(project, rev):
    """The DVC cache objects that commit `rev`'s dvc.lock names: each output's, and a cached folder's
    files (an uncached one, cache: false, has no listing in the cache: its files are in git)."""
    import yaml

    lock = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=project, capture_output=True,
                                         check=True, text=True).stdout)
    objects = set()
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            md5 = out["md5"]
            objects.add(f"files/md5/{md5[:2]}/{md5[2:]}")
            listing = project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
            if md5.endswith(".dir") and listing.exists():
                entries = json.loads(listing.read_text())
                objects |= {f"files/md5/{e['md5'][:2]}/{e['md5'][2:]}" for e in entries}
    return objects


def workspace_files(project):
    """Every file of the workspace outside git's and DVC's own folders and tune's: (size, mtime) by path."""
    skip = (".git/", ".dvc/", "results/tune/", "tune/")
    return {str(p.relative_to(project)): (p.stat().st_size, p.stat().st_mtime_ns) for p in project.rglob("*")
            if p.is_file() and not str(p.relative_to(project)).startswith(skip) and "__pycache__" not in p.parts}


def test_a_diverging_trial_is_pruned_within_its_epochs_and_leaves_nothing_half_written(project, tmp_path):
    """The default metric, train's validation nDCG@10, read per epoch while the fold trains: a trial
    at learning rate 0.1 (30 epochs) falls below the first trial's curve and is stopped mid-training.
    Its experiment does not exist, and neither the workspace nor the DVC cache holds anything of it."""
    shutil.copytree(PROJECT_ROOT / "tune", project / "tune", ignore=shutil.ignore_patterns("__pycache__"))
    set_params(project, {"train": {"epochs": 3}})  # uncommitted: every trial takes it, as dvc exp run would
    (project / "space.yaml").write_text("train.learning_rate: {type: categorical, choices: [0.001, 0.1]}\n"
                                        "train.epochs: {type: categorical, choices: [3, 30]}\n")
    cache_before, files_before = cache_objects(project), workspace_files(project)
    log_path = tmp_path / "tune.log"
    with open(log_path, "w") as log:
        # Seed 0: trial 0 is params.yaml's (0.001, 3 epochs), trial 1 (0.1, 30 epochs). Pruned trials
        # do not count toward --trials, so the run goes on after it: stopped with Ctrl-C.
        run = start_tune(project, "--trials", "2", "--study", "lr", "--search-space", "space.yaml", "--seed", "0",
                         "--warmup-trials", "1", "--warmup-epochs", "0", log=log)
        wait_for_line(log_path, "trial 1: pruned at epoch", run, timeout=240)
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 130, log_path.read_text()
    report = study_report(project, "lr")
    first, pruned = report["trials"][0], report["trials"][1]
    assert first["state"] == "COMPLETE" and first["params"] == {"train.learning_rate": 0.001, "train.epochs": 3}
    shown = dvc_experiments(project, "results/train/metrics.json")
    assert first["value"] == shown["lr-0"][1]["eval"]["ndcg@10"], "the trial's value is train's nDCG@10"
    assert pruned["state"] == "PRUNED" and pruned["params"] == {"train.learning_rate": 0.1, "train.epochs": 30}
    assert pruned["pruned"]["fold"] is None and 1 <= pruned["pruned"]["epoch"] < 30, pruned
    assert pruned["value"] == pruned["pruned"]["value"] and pruned["experiments"] == []
    assert report["complete"] == 1, "a pruned trial does not count toward --trials"
    # Nothing of the pruned (or the interrupted) fold: no experiment, the workspace as it was, and
    # no cache object but those of the first trial's outputs.
    assert sorted(shown) == ["lr-0"]
    assert workspace_files(project) == files_before
    assert cache_objects(project) - cache_before <= locked_objects(project, experiment_rev(project, "lr-0"))
    assert not list((project / ".dvc/tmp/tune/runners").iterdir())
    assert "dvc exp apply lr-0" in (project / "results/tune/lr.md").read_text()
    assert "dvc repro   # the stages after train" in (project / "results/tune/lr.md").read_text()


def experiment_rev(project, name):
    refs = git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/", cwd=project).stdout.splitlines()
    return next(line.split()[0] for line in refs if line.endswith(f"/{name}"))


def test_two_metrics_make_a_pareto_front_that_resumes_and_refuses_other_metrics(tmp_path, csv_path, tiny_bert):
    """Two objectives (split's val_pairs, maximized, and val_queries, minimized) on the holdout split:
    each trial's values are its experiment's metrics, the report's front is exactly the complete
    trials no other one dominates, each with its apply line; a rerun goes on, one with other metrics is refused."""
    project = tune_project(tmp_path / "project", csv_path, tiny_bert,
                           space="split.seed: {type: int, low: 0, high: 1000}\n"
                                 "split.val_size: {type: categorical, choices: [0.25, 0.4]}\n")
    both = ["--study", "front", "--search-space", "space.yaml", "--seed", "1",
            "--metric", "results/split/metrics.json:val_pairs:maximize", "--metric", "results/split/metrics.json:val_queries:minimize"]
    tune(project, "--trials", "1", *both)
    assert "--pruner median applies to one metric" in tune(project, "--trials", "3", *both).stdout
    report = study_report(project, "front")
    assert [t["state"] for t in report["trials"]] == ["COMPLETE"] * 3 and report["pruner"] == "none"
    shown = dvc_experiments(project, "results/split/metrics.json")
    for trial in report["trials"]:
        (name,) = trial["experiments"]
        assert trial["values"] == [shown[name][1]["val_pairs"], shown[name][1]["val_queries"]]

    def dominates(a, b):
        better_or_equal = a[0] >= b[0] and a[1] <= b[1]
        return better_or_equal and (a[0] > b[0] or a[1] < b[1])

    values = {t["number"]: t["values"] for t in report["trials"]}
    expected = {n for n, v in values.items() if not any(dominates(w, v) for m, w in values.items() if m != n)}
    assert {t["number"] for t in report["pareto_front"]} == expected
    for trial in report["pareto_front"]:
        assert trial["apply"][0] == f"dvc exp apply front-{trial['number']}"
    assert (project / "results/tune/front-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = tune(project, "--trials", "4", "--study", "front", "--search-space", "space.yaml",
                   "--metric", "results/split/metrics.json:val_pairs", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: --metric: study 'front' was run with --metric results/split/metrics.json:"
                                     "val_pairs:maximize --metric results/split/metrics.json:val_queries:minimize")


def test_a_trial_whose_metric_moved_to_the_stage_report_is_told_where(tmp_path):
    """An experiment's metrics file without the key, its report.json with it (a figure that is no
    longer a headline metric): the trial's failure says where the key is and the --metric to give."""
    from types import SimpleNamespace

    from tune.experiments import read_metric

    committed = {"results/train/metrics.json": '{"eval": {"ndcg@10": 0.8}, "step": 3}',
                 "results/train/report.json": '{"eval": {"ndcg@10": 0.8, "map": 0.7}, "train": {"runtime": 2.5}}'}

    def read_file(rev, path):
        if path not in committed:
            raise FileNotFoundError(f"{path}: not in experiment commit {rev}")
        return committed[path]

    project = SimpleNamespace(read_file=read_file)
    assert read_metric(project, "abc", "results/train/metrics.json", "eval.ndcg@10") == (0.8, None, False)
    value, why, missing = read_metric(project, "abc", "results/train/metrics.json", "train.runtime")
    assert (value, missing) == (None, True) and why == (
        "train.runtime is no longer in results/train/metrics.json: it moved to results/train/report.json, the report beside "
        "it (every figure the stage measured; docs/metrics.md); use --metric results/train/report.json:train.runtime")
    assert read_metric(project, "abc", "results/train/report.json", "train.runtime") == (2.5, None, False)
    value, why, missing = read_metric(project, "abc", "results/train/metrics.json", "eval.mpa")
    assert missing and why == "eval.mpa is not in results/train/metrics.json (its keys: eval.ndcg@10, step)"
    del committed["results/train/report.json"]
    assert read_metric(project, "abc", "results/train/metrics.json", "train.runtime")[1].startswith(
        "train.runtime is not in results/train/metrics.json (its keys:")


def test_a_time_measured_on_different_cpus_is_warned_about(tmp_path):
    """The report warns when a metric is a measured time and the complete trials ran on several CPUs."""
    from types import SimpleNamespace

    from tune.main import Metric
    from tune.report import cpu_warning

    def tuner(*keys):
        return SimpleNamespace(metrics=[Metric("results/vespa/metrics.json", key, "vespa", None, "minimize") for key in keys])

    trials = [{"state": "COMPLETE", "cpu": "AMD EPYC, 2 cores, AVX2"},
              {"state": "COMPLETE", "cpu": "Intel Xeon, 2 cores, AMX-INT8 and AVX-512 VNNI"}]
    warning = cpu_warning(tuner("served.ndcg@10", "served.ms_per_hit"), trials)
    assert warning.startswith("warning: served.ms_per_hit were measured on 2 different CPUs (AMD EPYC")
    assert cpu_warning(tuner("served.ndcg@10", "served.gflop_per_hit"), trials) is None, "arithmetic does not depend on the CPU"
    assert cpu_warning(tuner("served.ms_per_hit"), trials[:1] * 2) is None


def test_importances_are_drawn_from_ten_complete_trials(tmp_path):
    """fANOVA's picture of the params' importances, drawn by Optuna's matplotlib function once a study
    has IMPORTANCES_FROM complete trials (fewer say little more than which params differed)."""
    import optuna

    from tune.report import IMPORTANCES_FROM, draw

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) + 0.01 * trial.suggest_int("y", 0, 3), n_trials=IMPORTANCES_FROM)
    assert draw(study, tmp_path / "importances.png", "importances", "value") is None
    assert (tmp_path / "importances.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_without_a_complete_trial_takes_other_settings_and_leaves_no_lock_files(tmp_path, csv_path, tiny_bert):
    """`--trials 0` (or trials that all failed) fixes nothing: a later run may change --folds or the
    metrics. A complete trial fixes the split, and the refusal says "the holdout split", not None."""
    import optuna

    project = tune_project(tmp_path / "project", csv_path, tiny_bert)
    tune(project, "--trials", "0", "--search-space", "space.yaml", "--folds", "2")
    moved = tune(project, "--trials", "0", "--search-space", "space.yaml")
    assert "tune: note: study 'tune' has no complete trial; it starts again with the holdout split" in moved.stdout + moved.stderr
    tune(project, "--trials", "0", "--search-space", "space.yaml", "--study", "folds", "--folds", "2")
    refusals = []
    storage = f"sqlite:///{project / 'results/tune/studies.db'}"
    for study, other, was in [("tune", ["--folds", "2"], "the holdout split"), ("folds", [], "--folds 2")]:
        optuna.load_study(study_name=study, storage=storage).add_trial(optuna.trial.create_trial(value=0.5))
        refused = tune(project, "--trials", "1", "--search-space", "space.yaml", "--study", study, *other, check=False)
        assert (refused.returncode, refused.stderr.strip()) == (1, f"error: --folds: study '{study}' was run with {was}; a "
                                                                   f"study keeps one split once a trial is complete (give another --study)")
        refusals.append(refused.stderr.strip())
    assert sorted(path.name for path in (project / "results/tune").glob("studies.db*")) == ["studies.db"]
    assert_documented_errors_are_real("error: --folds", refusals)


def assert_documented_errors_are_real(prefix, lines):
    """Each error docs/tuning.md quotes that starts with `prefix` is one of `lines`, what tune printed
    (`...` in the docs stands for any text, such as the project's path or a file's keys)."""
    import re

    text = (PROJECT_ROOT / "docs/tuning.md").read_text(encoding="utf-8")
    quoted = [quote for quote in re.findall(r"`(error: [^`]+)`", text) if quote.startswith(prefix)]
    assert quoted, f"docs/tuning.md quotes no {prefix!r}"
    for quote in quoted:
        pattern = ".*".join(map(re.escape, quote.split("...")))
        assert any(re.fullmatch(pattern, line) for line in lines), (quote, lines)
