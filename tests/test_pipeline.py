"""The whole pipeline under the real dvc CLI: outputs, which stages a parameter change reruns, and
that every stage lists the code it runs among its deps."""
import json
import re

import numpy as np
import pytest

from tests.conftest import STAGES, dvc, stages_run
from tests.tiny import PROJECT_ROOT, set_params


def declared_outputs(pipeline):
    """What dvc.yaml (`pipeline`, as loaded) says the pipeline makes: {stage: its outs, metrics and
    plots}, and the files of the top-level metrics and plots (a plot's y or x files, or its id)."""
    def path(entry):  # `- path` or `- path: {options}`
        return entry if isinstance(entry, str) else next(iter(entry))

    by_stage = {name: [path(entry) for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, [])]
                for name, stage in pipeline["stages"].items()}
    top_level = [path(entry) for entry in pipeline.get("metrics", [])]
    for plot in pipeline.get("plots", []):
        plot_id, spec = (plot, {}) if isinstance(plot, str) else next(iter(plot.items()))
        files = [file for axis in ("y", "x") if isinstance((spec or {}).get(axis), dict) for file in spec[axis]]
        top_level += files or [plot_id]
    return by_stage, top_level


def test_repro_produces_every_declared_output(reproduced_project):
    import yaml

    by_stage, top_level = declared_outputs(yaml.safe_load((reproduced_project / "dvc.yaml").read_text()))
    declared = {path for paths in by_stage.values() for path in paths} | set(top_level)
    # The reading of dvc.yaml finds what it must: an out, a stage's metrics, the Vespa package, the plots' files.
    assert {"models/model.onnx", "results/quantize/metrics.json", "models/vespa", "results/eval/metrics.json",
            "results/train/plots/metrics/loss.tsv", "results/eval/plots/sklearn/roc.json"} <= declared
    lock = yaml.safe_load((reproduced_project / "dvc.lock").read_text())["stages"]
    for stage, paths in by_stage.items():
        assert sorted(out["path"] for out in lock[stage].get("outs", [])) == sorted(paths), f"dvc.lock: {stage}"
    for path in sorted(declared):
        assert (reproduced_project / path).exists(), path
        if (reproduced_project / path).is_dir() and path not in ("models/checkpoints", "data/teacher"):  # no teacher: empty
            assert any((reproduced_project / path).iterdir()), f"{path} is empty"
    # The files the README names, inside the declared folders too, whatever dvc.yaml comes to say.
    for path in ["data/raw/pairs.csv", "data/split/train.csv", "data/split/val.csv", "results/split/metrics.json",
                 "data/encoded/train", "data/encoded/val", "models/pretrained/model.safetensors",
                 "models/finetuned/model.safetensors", "models/finetuned/tokenizer.json", "models/model.onnx",
                 "models/model.int8.onnx", "models/tokenizer.json", "models/metadata.json", "results/train/metrics.json",
                 "results/export/metrics.json", "results/quantize/metrics.json", "results/eval/metrics.json"]:
        assert (reproduced_project / path).exists(), path
    assert not list((reproduced_project / "models/checkpoints").iterdir()), "no checkpoints left after a run"
    assert "pickle" not in " ".join(p.name for p in (reproduced_project / "models").rglob("*"))
    assert not list((reproduced_project / "models").rglob("*.bin"))


def test_second_repro_with_nothing_changed_runs_no_stage(project):
    result = dvc("repro", cwd=project)
    assert stages_run(result.stdout) == []
    assert "Data and pipelines are up to date" in result.stdout


def stages_after(changed, project):
    """The stages in `changed` and every stage downstream of them, in pipeline order, from `dvc dag`."""
    edges = re.findall(r'^"(\w+)" -> "(\w+)";$', dvc("dag", "--dot", cwd=project).stdout, flags=re.MULTILINE)
    reached = set(changed)
    for _ in STAGES:
        reached |= {after for before, after in edges if before in reached}
    return [stage for stage in STAGES if stage in reached]


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "learning_rate", 5e-4, ["train", "export", "quantize", "evaluate", "vespa"]),
    ("model", "num_layers", 1, ["train", "export", "quantize", "evaluate", "vespa"]),  # applied by train, not download
    ("encode", "max_length", 9, ["encode", "train", "export", "quantize", "evaluate", "vespa"]),
    ("export", "opset", 17, ["export", "quantize", "evaluate", "vespa"]),
    ("quantize", "per_channel", False, ["quantize", "evaluate", "vespa"]),
    ("split", "seed", 7, STAGES[1:]),
])
def test_param_change_invalidates_only_the_stages_after_it(project, section, key, value, expected):
    """`dvc status` names the stages that declare the param; the DAG gives what a rerun of them
    reaches. (That `dvc repro` reruns those whose inputs then changed is DVC's business; the test
    below runs one change to the end, and test_interrupts sees an identical retrain rerun nothing.)"""
    set_params(project, {section: {key: value}})
    changed = json.loads(dvc("status", "--json", cwd=project).stdout)
    assert all(report == [{"changed deps": {"params.yaml": {f"{section}.{key}": "modified"}}}]
               for report in changed.values()), changed
    assert stages_after(changed, project) == expected


def test_a_rerun_after_a_param_change_runs_the_stages_dvc_status_and_the_dag_name(project):
    set_params(project, {"quantize": {"per_channel": False}})
    expected = stages_after(json.loads(dvc("status", "--json", cwd=project).stdout), project)
    assert stages_run(dvc("repro", cwd=project).stdout) == expected == ["quantize", "evaluate", "vespa"]
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout


def test_params_diff_shows_the_changed_value(project):
    set_params(project, {"train": {"learning_rate": 5e-4}})
    diff = json.loads(dvc("params", "diff", "--json", cwd=project).stdout)
    change = diff["params.yaml"]
    assert list(change) == ["train.learning_rate"]
    assert (change["train.learning_rate"]["old"], change["train.learning_rate"]["new"]) == (0.001, 0.0005)


def flat(data, prefix=""):
    """{dotted key: value} of a metrics file's nested content."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    return {key: value for name, child in data.items() for key, value in flat(child, f"{prefix}{name}.").items()}


def test_metrics_show_reports_the_headline_numbers_and_each_report_the_rest(project):
    """At most 40 values in `dvc metrics show` (issue 39): each stage's headline numbers, picked from
    its report.json beside the metrics file, which holds every figure."""
    from stages.common import headline

    metrics = json.loads(dvc("metrics", "show", "--json", cwd=project).stdout)
    files = {path: flat(content["data"]) for path, content in next(iter(metrics.values()))["data"].items()}
    assert sum(len(values) for values in files.values()) <= 40, {path: len(values) for path, values in files.items()}
    required = {"results/train/metrics.json": ["eval.ndcg@10"],
                "results/eval/metrics.json": ["fp32.ndcg@10", "int8.ndcg@10", "tfidf.ndcg@10"],
                "results/vespa/metrics.json": ["served.ndcg@10", "served.ms_per_hit"]}
    for path, keys in required.items():
        assert set(keys) <= set(files[path]), path
    for path in files:
        report = json.loads((project / path).with_name("report.json").read_text())
        headline_keys = [key for key in files[path] if key != "step"]  # dvclive's step: the last epoch
        assert flat(headline(report, headline_keys)) == {key: files[path][key] for key in headline_keys}, path
    evaluation = json.loads((project / "results/eval/report.json").read_text())
    for scorer in ("fp32", "int8", "tfidf"):
        for name in ("roc_auc", "average_precision", "ndcg@10", "mrr@10", "map", "precision@5"):
            assert 0 <= evaluation[scorer][name] <= 1, (scorer, name)
    for model in ("fp32", "int8"):
        assert evaluation[model]["threshold"] == 0.5 and 0 <= evaluation[model]["f1"] <= 1
    assert files["results/eval/metrics.json"]["fp32.roc_auc"] > 0.6, "the fixture's relevance signal should be learned"
    assert files["results/export/metrics.json"]["max_abs_logit_diff"] <= 1e-4
    assert files["results/quantize/metrics.json"]["spearman"] >= 0.9
    split = json.loads((project / "results/split/report.json").read_text())
    assert split["pairs"] == evaluation["pairs"] + split["train_pairs"]
    assert files["results/train/metrics.json"]["step"] == json.loads((project / "results/train/report.json").read_text())["epoch"]


def test_declared_metrics_are_the_onnx_files_scores_of_the_validation_csv(reproduced_project):
    """What `dvc metrics show` reports is what the shipped files score, through the torch-free scorer."""
    import pandas as pd

    from scorer import RelevanceScorer
    from stages.metrics import relevance_metrics

    evaluation = json.loads((reproduced_project / "results/eval/report.json").read_text())
    val = pd.read_csv(reproduced_project / "data/split/val.csv")
    for name, path in (("fp32", "models/model.onnx"), ("int8", "models/model.int8.onnx")):
        scores = RelevanceScorer(reproduced_project / path).scores(val["query"].tolist(), val["title"].tolist())
        assert relevance_metrics(val["query"], val["label"].to_numpy(), scores) == pytest.approx(evaluation[name]), name
    assert evaluation["fp32"] != evaluation["int8"], "two different files, two measurements"


def test_train_writes_the_loss_curves_and_no_evaluation(reproduced_project):
    train_log = reproduced_project / "results/train"
    assert (train_log / "plots/metrics/loss.tsv").exists() and (train_log / "plots/metrics/eval/loss.tsv").exists()
    assert "effective_batch_size: 16" in (train_log / "params.yaml").read_text()
    assert not list(train_log.rglob("sklearn")), "ROC, PR and confusion plots come from evaluate"


def test_plots_show_renders_every_declared_plot(project, tmp_path):
    import yaml

    result = dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=project)
    html = (tmp_path / "plots" / "index.html").read_text()
    declared = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    for plot in declared:
        (title, spec), = plot.items()
        assert title in html
        for data_file in spec["y"]:
            assert (project / data_file).stat().st_size > 0, data_file
    assert "WARNING" not in result.stderr


def test_exported_onnx_matches_pytorch_on_new_pairs(reproduced_project):
    """Independent of the stage's own parity check: fresh pairs, batch sizes 1 and 7, padded rows."""
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = reproduced_project / "models/finetuned"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    session = onnxruntime.InferenceSession(str(reproduced_project / "models/model.onnx"))
    assert [i.name for i in session.get_inputs()] == tokenizer.model_input_names
    queries = ["coronavirus vaccine trial", "masks", "bats origin", "children school", "pcr testing", "heart", "drug"]
    titles = ["Vaccine antibody study", "Face coverings in the kitchen market", "Bats", "Infants", "A", "Cardiac", "x"]
    for size in (1, 7):
        batch = tokenizer(queries[:size], titles[:size], padding=True, return_tensors="np")
        batch = {name: batch[name].astype(np.int64) for name in tokenizer.model_input_names}
        with torch.no_grad():
            expected = model(**{name: torch.from_numpy(array) for name, array in batch.items()}).logits.numpy()
        (actual,) = session.run(["logits"], batch)
        assert actual.shape == (size, 2)
        np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_dvc_yaml_lists_exact_params_per_stage():
    import yaml

    pipeline = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert list(pipeline["stages"]) == STAGES
    declared = [p for stage in pipeline["stages"].values() for p in stage.get("params", [])]
    assert all(isinstance(p, str) and "." in p for p in declared), "each stage names single params, not files"
    every_param = {f"{section}.{key}" for section, values in params.items() for key in values}
    assert set(declared) == every_param, "every param is read by some stage"
    # also in export's tokenizer.json, and the length of the token sequences Vespa builds; vespa quantizes
    # its per-tensor int8 candidates with quantize's settings
    assert sorted(p for p in declared if declared.count(p) > 1) == sorted(
        ["encode.max_length"] * 3 + [f"quantize.{key}" for key in ("op_types", "per_channel", "reduce_range")] * 2)


def module_path(module):
    path = PROJECT_ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def local_modules(module, seen=None):
    """stages.* and scorer modules `module` imports, directly or through each other (its own code included)."""
    import ast

    seen = seen if seen is not None else set()
    seen.add(module)
    tree = ast.parse(module_path(module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name and name.split(".")[0] in ("stages", "scorer") and name not in seen:
                local_modules(name, seen)
    return seen


def test_every_stage_depends_on_the_code_it_runs():
    import yaml

    for name, stage in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].items():
        module = re.match(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        needed = {str(module_path(m).relative_to(PROJECT_ROOT)) for m in local_modules(module)}
        assert needed <= set(stage["deps"]), f"{name}: add {sorted(needed - set(stage['deps']))} to its deps"
