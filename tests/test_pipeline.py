"""The whole pipeline under the real dvc CLI: outputs, which stages a parameter change reruns, and
that every stage lists the code it runs among its deps."""
import json
import re

import numpy as np
import pytest

from tests.conftest import STAGES, dvc, git, saved_model_roc_auc, stages_run
from tests.tiny import PROJECT_ROOT, set_params


def test_repro_produces_every_declared_output(reproduced_project):
    for path in ["data/raw/pairs.csv", "data/split/train.csv", "data/split/val.csv", "data/encoded/train",
                 "data/encoded/val", "models/pretrained/model.safetensors", "models/finetuned/model.safetensors",
                 "models/finetuned/tokenizer.json", "models/model.onnx", "models/model.int8.onnx",
                 "models/tokenizer.json", "models/metadata.json", "results/train/metrics.json",
                 "results/eval/metrics.json", "results/export/metrics.json"]:
        assert (reproduced_project / path).exists(), path
    assert not list((reproduced_project / "models/checkpoints").iterdir()), "no checkpoints left after a run"
    assert "pickle" not in " ".join(p.name for p in (reproduced_project / "models").rglob("*"))
    assert not list((reproduced_project / "models").rglob("*.bin"))


def test_second_repro_with_nothing_changed_runs_no_stage(project):
    result = dvc("repro", cwd=project)
    assert stages_run(result.stdout) == []
    assert "Data and pipelines are up to date" in result.stdout


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "learning_rate", 5e-4, ["train", "export"]),
    ("encode", "max_length", 9, ["encode", "train", "export"]),  # short enough to truncate the fixture pairs
    ("export", "opset", 17, ["export"]),
    ("split", "seed", 7, ["split", "encode", "train", "export"]),
])
def test_param_change_reruns_only_the_stages_after_it(project, section, key, value, expected):
    set_params(project, {section: {key: value}})
    result = dvc("repro", cwd=project)
    assert stages_run(result.stdout) == expected
    assert "Data and pipelines are up to date" in dvc("status", cwd=project).stdout


def test_params_diff_shows_the_changed_value(project):
    set_params(project, {"train": {"learning_rate": 5e-4}})
    diff = json.loads(dvc("params", "diff", "--json", cwd=project).stdout)
    change = diff["params.yaml"]
    assert list(change) == ["train.learning_rate"]
    assert (change["train.learning_rate"]["old"], change["train.learning_rate"]["new"]) == (0.001, 0.0005)


def test_metrics_show_reports_model_baseline_and_export_metrics(reproduced_project):
    metrics = json.loads(dvc("metrics", "show", "--json", cwd=reproduced_project).stdout)
    files = next(iter(metrics.values()))["data"]
    evaluation = files["results/eval/metrics.json"]["data"]
    export = files["results/export/metrics.json"]["data"]
    for scorer in ("model", "tfidf"):
        for name in ("roc_auc", "average_precision", "ndcg@10", "mrr@10", "map", "precision@5"):
            assert 0 <= evaluation[scorer][name] <= 1, (scorer, name)
    assert evaluation["model"]["threshold"] == 0.5 and 0 <= evaluation["model"]["f1"] <= 1
    assert evaluation["model"]["roc_auc"] > 0.6, "the fixture's relevance signal should be learned"
    assert evaluation["effective_batch_size"] == 16
    assert export["max_abs_logit_diff"] <= 1e-4


def test_evaluated_metrics_are_those_of_the_saved_model_in_row_order(reproduced_project):
    """Predictions must line up with the validation rows (the length-grouped sampler reorders them)."""
    evaluated = json.loads((reproduced_project / "results/eval/metrics.json").read_text())["model"]
    assert saved_model_roc_auc(reproduced_project) == pytest.approx(evaluated["roc_auc"])


def test_plots_show_renders_every_declared_plot(reproduced_project, tmp_path):
    import yaml

    result = dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=reproduced_project)
    html = (tmp_path / "plots" / "index.html").read_text()
    declared = yaml.safe_load((reproduced_project / "dvc.yaml").read_text())["plots"]
    for plot in declared:
        (title, spec), = plot.items()
        assert title in html
        for data_file in spec["y"]:
            assert (reproduced_project / data_file).stat().st_size > 0, data_file
    assert "WARNING" not in result.stderr


def test_same_params_and_seed_give_identical_model_and_metrics(project):
    import yaml

    def train_outputs():
        outs = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["outs"]
        return {out["path"]: out["md5"] for out in outs}

    before = train_outputs()
    dvc("repro", "--force", "--single-item", "train", cwd=project)
    after = train_outputs()
    assert after["models/finetuned"] == before["models/finetuned"]
    assert after["results/eval"] == before["results/eval"]
    assert git("status", "--porcelain", "results/eval", cwd=project).stdout == ""
    # Only the training log differs: it records wall-clock runtimes and throughput.
    changed = git("diff", "--name-only", "results/train", cwd=project).stdout.split()
    assert all(re.search(r"(runtime|_per_second)\.tsv$|/metrics\.json$", path) for path in changed), changed


def test_exported_onnx_matches_pytorch_on_new_pairs(reproduced_project):
    """Independent of the stage's own parity check: fresh pairs, batch sizes 1 and 7, padded rows."""
    import onnxruntime
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = reproduced_project / "models/finetuned"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    session = onnxruntime.InferenceSession(str(reproduced_project / "models/model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids", "attention_mask"]
    queries = ["coronavirus vaccine trial", "masks", "bats origin", "children school", "pcr testing", "heart", "drug"]
    titles = ["Vaccine antibody study", "Face coverings in the kitchen market", "Bats", "Infants", "A", "Cardiac", "x"]
    for size in (1, 7):
        batch = tokenizer(queries[:size], titles[:size], padding=True, return_tensors="np")
        batch = {name: batch[name].astype(np.int64) for name in ("input_ids", "token_type_ids", "attention_mask")}
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
    assert [p for p in declared if declared.count(p) > 1] == ["encode.max_length"] * 2  # also in export's metadata


def local_modules(module, seen=None):
    """stages.* modules `module` imports, directly or through each other (its own code included)."""
    import ast

    seen = seen if seen is not None else set()
    seen.add(module)
    tree = ast.parse((PROJECT_ROOT / (module.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name and name.startswith("stages.") and name not in seen:
                local_modules(name, seen)
    return seen


def test_every_stage_depends_on_the_code_it_runs():
    import yaml

    for name, stage in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].items():
        module = re.match(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        needed = {m.replace(".", "/") + ".py" for m in local_modules(module)}
        assert needed <= set(stage["deps"]), f"{name}: add {sorted(needed - set(stage['deps']))} to its deps"
