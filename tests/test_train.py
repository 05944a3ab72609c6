"""train: precision choice and the evaluation metrics."""
import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.training import compute_metrics, device_flags


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU choice")
def test_auto_precision_is_fp32_on_cpu():
    assert device_flags("auto") == {"bf16": False, "fp16": False, "tf32": None, "dataloader_pin_memory": False}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_without_gpu_is_refused(precision):
    with pytest.raises(StageError, match=f"train.precision={precision}: mixed precision needs a GPU"):
        device_flags(precision)


def test_unknown_precision_is_refused():
    with pytest.raises(StageError, match="train.precision=fp8: expected one of auto, fp32, fp16, bf16"):
        device_flags("fp8")


def test_metrics_from_logits():
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5], [-1.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    metrics = compute_metrics((logits, labels))
    assert metrics["accuracy"] == 0.75
    assert metrics["f1"] == pytest.approx(0.8)  # precision 1, recall 2/3


def test_only_checkpoints_of_the_same_run_are_resumed(tmp_path):
    from stages.training import checkpoint_to_resume

    checkpoints = tmp_path / "checkpoints"
    assert checkpoint_to_resume(checkpoints, "run-a", main_process=True) is None
    (checkpoints / "checkpoint-12").mkdir()  # what the Trainer saves after an epoch
    assert checkpoint_to_resume(checkpoints, "run-a", main_process=True) == str(checkpoints / "checkpoint-12")
    assert checkpoint_to_resume(checkpoints, "run-b", main_process=False) is None
    assert (checkpoints / "checkpoint-12").exists(), "only the main process clears"
    assert checkpoint_to_resume(checkpoints, "run-b", main_process=True) is None
    assert sorted(p.name for p in checkpoints.iterdir()) == ["run.json"]


def test_run_fingerprint_changes_with_params_and_data(tmp_path):
    from stages.training import run_fingerprint

    data = tmp_path / "data.arrow"
    data.write_bytes(b"pairs")
    first = run_fingerprint({"learning_rate": 1e-3}, [data])
    assert first == run_fingerprint({"learning_rate": 1e-3}, [data])
    assert first != run_fingerprint({"learning_rate": 5e-4}, [data])
    data.write_bytes(b"other pairs")
    assert first != run_fingerprint({"learning_rate": 1e-3}, [data])
