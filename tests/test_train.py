"""train: precision and device choices (on CPU, and on GPUs simulated by patching torch.cuda's
queries: the choice is this project's logic), per-epoch metrics, resumable checkpoints."""
from unittest import mock

import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.training import compute_metrics, device_flags, training_arguments

TRAIN_PARAMS = {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "learning_rate": 5e-5, "warmup_steps": 0,
                "weight_decay": 0.01, "seed": 42, "resume": False, "freeze_base": False, "cache_features": True,
                "group_by_length": True, "precision": "auto", "gpus": 1}


def simulated_gpus(count, capability):
    """torch.cuda as a host with `count` GPUs of compute capability `capability` reports it (the
    bf16 query says yes on all of them, as it does for T4 and V100, which only emulate bf16)."""
    return mock.patch.multiple(torch.cuda, is_available=lambda: True, device_count=lambda: count,
                               get_device_capability=lambda device=None: capability,
                               is_bf16_supported=lambda *args, **kwargs: True)


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 0), "fp16"),   # V100
    ((7, 5), "fp16"),   # T4: is_bf16_supported() is True there, but bf16 is emulated
    ((8, 0), "bf16"),   # A100
    ((9, 0), "bf16"),   # H100
])
def test_auto_precision_is_bf16_only_from_compute_capability_8(capability, expected):
    with simulated_gpus(1, capability):
        flags = device_flags("auto")
    assert (flags["bf16"], flags["fp16"]) == (expected == "bf16", expected == "fp16")
    assert flags["tf32"] is (True if capability >= (8, 0) else None)


def test_one_gpu_is_used_on_a_host_with_several():
    """Without torchrun the Trainer would wrap the model in DataParallel over every visible GPU."""
    with simulated_gpus(4, (7, 0)), mock.patch.object(torch.cuda, "set_device"):  # pre-Ampere: no TF32 to enable
        args = training_arguments({**TRAIN_PARAMS, "precision": "fp32"}, "unused")
        assert (args.n_gpu, args.train_batch_size, args.world_size) == (1, 16, 1)


def test_train_gpus_beyond_the_visible_ones_is_refused(monkeypatch):
    from stages.train import launch_distributed

    with simulated_gpus(2, (9, 0)):
        with pytest.raises(StageError, match=r"train.gpus=4: only 2 GPU\(s\) visible"):
            launch_distributed(4)


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


def test_train_ranks_the_validation_pairs_per_epoch_as_evaluate_ranks_the_exported_model(reproduced_project):
    """Train's nDCG@10 (the PyTorch model, queries grouped from the encoded validation set) and
    evaluate's fp32 one (the ONNX export, queries from val.csv) on the same pairs: the same function
    on the same grouping, so they differ only by the export's float error (export.atol on logits)."""
    import csv
    import json

    project = reproduced_project
    train = json.loads((project / "results/train/report.json").read_text())["eval"]
    fp32 = json.loads((project / "results/eval/report.json").read_text())["fp32"]
    assert train["queries_ranked"] == fp32["queries_ranked"] and train["queries_ranked"] > 1
    assert abs(train["ndcg@10"] - fp32["ndcg@10"]) <= 1e-3, (train, fp32)
    assert abs(train["mrr@10"] - fp32["mrr@10"]) <= 1e-3
    with open(project / "results/train/plots/metrics/eval/ndcg@10.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    curve = [float(row["ndcg@10"]) for row in rows]
    epochs = json.loads((project / "results/train/report.json").read_text())["epoch"]
    assert len(curve) == epochs, "one value per epoch"
    training_steps = [line.split("\t")[0] for line in (project / "results/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert [row["step"] for row in rows] == training_steps == [str(epoch) for epoch in range(1, epochs + 1)], "step: the epoch"
    assert curve[-1] == train["ndcg@10"] and len(set(curve)) > 1


def test_the_training_log_steps_by_epoch_and_keeps_the_run_figures_out_of_the_metrics(tmp_path):
    """stages.epoch_log.EpochLog fed the Trainer's logs as transformers 5.24 gives them with logging and
    evaluation once an epoch (training, then validation, at state.epoch E; the run's figures at the
    end): both of an epoch's logs on step E, the headline metrics in metrics.json, the rest in report.json."""
    import csv
    import json

    from dvclive import Live
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from stages.epoch_log import EpochLog

    live = Live(str(tmp_path / "train"), dvcyaml=False, save_dvc_exp=False, report=None)
    log = EpochLog(live, tmp_path / "train/report.json", effective_batch_size=16)
    args, state, control = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none"), TrainerState(), TrainerControl()
    log.on_train_begin(args, state, control)
    for epoch in (1, 2):
        state.epoch, state.global_step = float(epoch), 5 * epoch
        log.on_log(args, state, control, logs={"loss": 0.7 - epoch / 10, "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": float(epoch)})
        log.on_log(args, state, control, logs={"eval_loss": 0.8 - epoch / 10, "eval_ndcg@10": 0.5 + epoch / 10,
                                               "eval_mrr@10": 0.4, "eval_runtime": 0.1, "eval_samples_per_second": 600.0,
                                               "epoch": float(epoch)})
    log.on_log(args, state, control, logs={"train_runtime": 2.0, "train_samples_per_second": 90.0, "train_steps_per_second": 5.0,
                                           "total_flos": 1e9, "train_loss": 0.65, "epoch": 2.0})
    log.on_train_end(args, state, control)

    def curve(name):
        with open(tmp_path / "train/plots/metrics" / f"{name}.tsv", newline="") as f:
            return [(int(row["step"]), float(row[name.rsplit("/", 1)[-1]])) for row in csv.DictReader(f, delimiter="\t")]

    assert curve("loss") == [(1, pytest.approx(0.6)), (2, pytest.approx(0.5))]
    assert curve("eval/loss") == [(1, pytest.approx(0.7)), (2, pytest.approx(0.6))], "validation on the training's steps"
    assert [step for step, _ in curve("eval/ndcg@10")] == [1, 2]
    assert not (tmp_path / "train/plots/metrics/epoch.tsv").exists() and not (tmp_path / "train/plots/metrics/train").exists()
    metrics = json.loads((tmp_path / "train/metrics.json").read_text())
    assert metrics == {"eval": {"ndcg@10": pytest.approx(0.7), "mrr@10": 0.4, "loss": pytest.approx(0.6)},
                       "loss": pytest.approx(0.5), "step": 2}
    report = json.loads((tmp_path / "train/report.json").read_text())
    assert report["train"] == {"runtime": 2.0, "samples_per_second": 90.0, "steps_per_second": 5.0, "loss": 0.65}
    assert (report["total_flos"], report["epoch"], report["optimizer_steps"], report["effective_batch_size"]) == (1e9, 2, 10, 16)
    assert report["eval"]["samples_per_second"] == 600.0 and report["eval"]["ndcg@10"] == metrics["eval"]["ndcg@10"]
    assert "output_dir" in (tmp_path / "train/params.yaml").read_text(), "the Trainer's arguments, as DVCLiveCallback logs them"
