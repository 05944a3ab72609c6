"""The offline demo's project (python -m tests.demo): what it commits, copies and prints. The demo's
full `dvc repro` takes about a minute, so the tests run only the stages up to split in its project,
in this process, recorded by `dvc commit` as the reproduced_project fixture does."""
import json
import shlex
import sys

import yaml

from tests.conftest import dvc, run_cli, run_stages_in_process
from tests.demo import commit_baseline, make_demo_project, summary
from tests.tiny import PROJECT_ROOT


def comments(text):
    return [line.partition("#")[2] for line in text.splitlines() if "#" in line]


def next_steps(text):
    """The command lines the summary prints to try, by the program they start with."""
    return {line.split()[0]: line.strip() for line in text.splitlines() if line.startswith("  ")}


def test_demo_commits_its_baseline_so_metrics_diff_compares_with_head(tmp_path, pairs_csv, tiny_bert):
    project = make_demo_project(tmp_path / "project", pairs_csv, tiny_bert)
    run_stages_in_process(project, ["download", "split"])
    dvc("commit", "--force", "--with-deps", "split", cwd=project)
    commit_baseline(project)
    assert run_cli(["git", "status", "--porcelain"], cwd=project).stdout == ""
    assert run_cli(["git", "ls-files", "dvc.lock", "results/split/metrics.json"], cwd=project).stdout.split() == [
        "dvc.lock", "results/split/metrics.json"]
    diff = dvc("metrics", "diff", "--all", "--json", "--targets", "results/split/metrics.json",
               cwd=project)
    assert "failed to load" not in diff.stderr
    changes = json.loads(diff.stdout)["results/split/metrics.json"]
    assert changes and all(change["old"] is not None and change["old"] == change["new"] for change in changes.values())


def test_demo_project_keeps_params_comments_and_its_printed_steps_work(tmp_path, pairs_csv, tiny_bert):
    project = make_demo_project(tmp_path / "project", pairs_csv, tiny_bert)
    assert comments((project / "params.yaml").read_text()) == comments((PROJECT_ROOT / "params.yaml").read_text())
    text = summary(project, pairs_csv)
    assert "tiny randomly initialised BERT" in text and "240\nsynthetic pairs" in text

    steps = next_steps(text)
    learning_rate = yaml.safe_load((project / "params.yaml").read_text())["train"]["learning_rate"]
    edit = steps["sed"].split(" && ")[0]
    run_cli(["sh", "-c", edit], cwd=project)  # the README's edit, with the demo's value
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["learning_rate"] == learning_rate / 2
    assert f"-S train.learning_rate={learning_rate / 2:g} " in steps["dvc"]

    study = shlex.split(steps["python"])
    assert study[:3] == ["python", "-m", "tune"]
    from tune.main import parse_args

    parse_args(study[3:])  # the printed options are tune's
    help_text = run_cli([sys.executable, "-m", "tune", "--help"], cwd=project).stdout  # tune/ is in the project
    assert help_text.startswith("usage: python -m tune")
    assert (project / "search_space.yaml").is_file() and (project / "scripts/summarize_folds.py").is_file()
