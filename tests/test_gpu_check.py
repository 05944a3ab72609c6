"""bench/gpu_check.py, the one command for a GPU machine: its inputs, its stage order, its peak
table and its import check."""
from collections import Counter

import yaml

from bench.gpu_check import QUERIES, RELEVANT_SHARE, peak_tflops_for
from bench.synthetic import pipeline_stages, realistic_pairs
from tests.tiny import PROJECT_ROOT


def test_synthetic_pairs_are_shaped_like_the_cord19_csv():
    pairs = list(zip(*realistic_pairs(QUERIES, 100, RELEVANT_SHARE)))
    assert len(pairs) == 5_000 and len({(query, title) for query, title, _ in pairs}) == 5_000
    per_query = Counter(query for query, _, _ in pairs)
    assert len(per_query) == QUERIES and set(per_query.values()) == {100}
    lengths = [len(title.split()) for _, title, _ in pairs]
    assert min(lengths) >= 6 and max(lengths) <= 30 and 10 <= sum(lengths) / len(lengths) <= 20
    assert 0.25 <= sum(label for *_, label in pairs) / len(pairs) <= 0.35


def test_stages_run_after_the_stages_whose_outputs_they_read(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(yaml.safe_dump({"stages": {
        "report": {"cmd": "r", "deps": ["results/eval/metrics.json"], "outs": ["report.md"]},
        "evaluate": {"cmd": "e", "deps": ["models/model.onnx"], "outs": [{"results/eval": {"cache": False}}]},
        "export": {"cmd": "x", "deps": ["models"], "outs": ["models/model.onnx"]},
        "lint": {"cmd": "l"},
    }}, sort_keys=False))
    assert [name for name, _ in pipeline_stages(dvc_yaml)] == ["export", "evaluate", "report", "lint"]
    assert [name for name, _ in pipeline_stages()][:3] == ["download", "split", "encode"]


def test_peak_table_matches_whole_model_names():
    assert peak_tflops_for("NVIDIA H200") == peak_tflops_for("NVIDIA H100 80GB HBM3") == 989
    assert peak_tflops_for("NVIDIA H100 PCIe") == 756
    assert peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops_for("NVIDIA L4") == 121
    assert peak_tflops_for("NVIDIA L40S") is None  # not an L4: --peak-tflops


def test_every_import_the_pipeline_needs_is_checked_and_found(tmp_path):
    """The check's first step, which on the device machine says what a missing wheel would break.
    The whole dry run (`python -m bench.gpu_check --dry-run`, every stage on 200 rows) takes
    1.5 to 2 minutes here, too long for every test run; docs/gpu.md records it."""
    import shutil
    import time

    from bench.gpu_check import check_imports, child_env

    code = tmp_path / "code"
    for package in ("stages", "scorer", "bench"):
        shutil.copytree(PROJECT_ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = check_imports(code, child_env(), tmp_path, deadline=time.monotonic() + 120)
    assert result["status"] == "ok", result
    assert {"torch", "transformers", "onnxruntime", "dvclive.live", "datasets"} <= {
        name.split(".")[0] if name.split(".")[0] != "dvclive" else "dvclive.live" for name in result["imports"]}
