"""params.yaml is checked before any stage works: a value of the wrong type or out of range, or a
misspelt key, stops the stage in one line naming the param (stages.common.PARAMS, in load_params)."""
import contextlib
import sys

import pytest
import yaml

from stages.common import PARAMS, ParamsLoader, StageError, check_params, load_params
from tests.conftest import run_cli
from tests.tiny import PROJECT_ROOT

DEFAULTS = yaml.load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"), Loader=ParamsLoader)


def changed(section, key, value):
    return {**DEFAULTS, section: {**DEFAULTS[section], key: value}}


def test_every_param_of_params_yaml_has_a_check():
    unchecked = [f"{section}.{key}" for section, values in DEFAULTS.items() for key in values
                 if key not in PARAMS.get(section, {})]
    assert unchecked == [], "add these to stages.common.PARAMS"
    check_params(DEFAULTS)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("train", "epochs", "three", "train.epochs=three: expected a number above 0"),
    ("train", "epochs", 0, "train.epochs=0: expected a number above 0"),
    ("train", "batch_size", 1.5, "train.batch_size=1.5: expected a positive integer"),
    ("train", "batch_size", True, "train.batch_size=true: expected a positive integer"),
    ("train", "learning_rate", "fast", "train.learning_rate=fast: expected a number above 0"),
    ("train", "learning_rate", -1e-4, "train.learning_rate=-0.0001: expected a number above 0"),
    ("train", "warmup_steps", None, "train.warmup_steps=null: expected a number, 0 or more"),
    ("train", "freeze_base", "yes please", "train.freeze_base=yes please: expected true or false"),
    ("train", "num_labels", 3, "train.num_labels=3: expected 2 (irrelevant/relevant, softmax) or 1"),
    ("train", "num_labels", True, "train.num_labels=true: expected 2"),
    ("train", "precision", "fp23", "train.precision=fp23: expected one of auto, fp32, fp16, bf16"),
    ("train", "loss", "hinge", "train.loss=hinge: expected one of pointwise, rank_net, list_net, lambda_loss, margin_mse, mse"),
    ("train", "list_size", 1, "train.list_size=1: expected an integer of at least 2"),
    ("train", "learnig_rate", 1e-4, "train.learnig_rate: not a param; did you mean train.learning_rate?"),
    ("data", "sha256", "abc", "data.sha256=abc: expected null or a SHA-256 of 64 hexadecimal digits"),
    ("model", "name", "", "model.name=: expected a non-empty string"),
    ("model", "num_layers", 0, "model.num_layers=0: expected null (all of them) or a positive integer"),
    ("split", "folds", 1, "split.folds=1: expected null (one holdout split) or an integer of at least 2"),
    ("split", "val_size", 1, "split.val_size=1: expected a fraction between 0 and 1"),
    ("encode", "max_length", "128", "encode.max_length=128: expected an integer of at least 8"),
    ("export", "atol", "1e-4x", "export.atol=1e-4x: expected a number, 0 or more"),
    ("quantize", "op_types", [], "quantize.op_types=[]: expected a non-empty list of names"),
    ("quantize", "check_pairs", 0, "quantize.check_pairs=0: expected a positive integer"),
    ("evaluate", "plot_pairs", 1e4, "evaluate.plot_pairs=10000.0: expected a positive integer"),
    ("vespa", "max_length", "long", "vespa.max_length=long: expected auto or an integer from 3 to encode.max_length"),
    ("vespa", "intraop_threads", 0, "vespa.intraop_threads=0: expected null (Vespa's default) or a positive integer"),
    ("vespa", "length_coverage", 1.5, "vespa.length_coverage=1.5: expected a share above 0 and at most 1"),
])
def test_a_bad_param_is_refused_in_one_line_naming_it(section, key, value, message):
    with pytest.raises(StageError) as refused:
        check_params(changed(section, key, value))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("train", "learning_rate", 1),         # an int where a float is expected
    ("train", "epochs", 2.5),
    ("split", "folds", None),              # null where it is allowed
    ("split", "folds", 5),
    ("vespa", "max_length", "auto"),
    ("vespa", "max_length", 64),
    ("vespa", "gpu_device", 0),
    ("quantize", "min_spearman", 1.01),    # a check made to fail, as test_scorer makes it
    ("train", "loss", "lambda_loss"),
    ("model", "name", "~/models/tiny"),    # whether a folder exists is download's to say
])
def test_a_good_param_passes(section, key, value):
    check_params(changed(section, key, value))


def test_dvc_exp_run_spelling_of_a_float_is_a_number(tmp_path):
    """`dvc exp run -S train.learning_rate=5e-5` writes 5e-05, a str to PyYAML's YAML 1.1."""
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8").replace("learning_rate: 5.0e-5", "learning_rate: 5e-05")
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with contextlib.chdir(tmp_path):
        assert load_params("train")["learning_rate"] == 5e-05


def test_a_wrong_type_stops_a_stage_in_one_line_before_any_work(tmp_path):
    """The stage's own process: `error: ...`, exit status 1, no traceback, nothing written. A typo in
    another stage's param stops it too: whichever stage runs first refuses it."""
    for section, key, value, line in [("train", "epochs", "three", "error: train.epochs=three: expected a number above 0"),
                                      ("vespa", "rerank_count", "many", "error: vespa.rerank_count=many: expected a positive integer")]:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed(section, key, value)), encoding="utf-8")
        result = run_cli([sys.executable, "-m", "stages.encode", "data/split", "models/pretrained", "data/encoded"],
                         tmp_path, check=False, PYTHONPATH=str(PROJECT_ROOT), PYTHONDONTWRITEBYTECODE="1")
        assert (result.returncode, result.stderr.strip().splitlines()) == (1, [line])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_param_typo_put_back_reruns_no_stage(project):
    """train.precision: fp23 fails train in one line; DVC keeps train's outputs (persist: true, as
    nothing could restore them: train has no run-cache), so once the value is put back `dvc repro`
    finds every stage up to date, with no `dvc checkout` first (docs/pipeline.md)."""
    from tests.conftest import dvc, stages_run
    from tests.tiny import set_params

    params = (project / "params.yaml").read_text(encoding="utf-8")
    outputs = ["models/finetuned/model.safetensors", "results/train/metrics.json", "results/train/params.yaml",
               "results/eval/metrics.json"]
    before = {path: (project / path).read_bytes() for path in outputs}
    set_params(project, {"train": {"precision": "fp23"}})
    failed = dvc("repro", cwd=project, check=False)
    assert failed.returncode != 0 and stages_run(failed.stdout) == ["train"]
    assert "error: train.precision=fp23: expected one of auto, fp32, fp16, bf16\n" in failed.stderr
    assert "Traceback" not in failed.stderr
    (project / "params.yaml").write_text(params, encoding="utf-8")
    assert stages_run(dvc("repro", cwd=project).stdout) == []
    assert {path: (project / path).read_bytes() for path in outputs} == before
