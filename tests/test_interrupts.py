"""Interrupted runs: a killed training leaves nothing the next `dvc repro` trips over, and
train.resume continues from the Trainer's last checkpoint to the same result."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import dvc, pipeline_env, stages_run
from tests.tiny import set_params


def start_repro(project, log):
    """`dvc repro` in its own process group, so a signal reaches dvc and the stage it runs, as Ctrl-C would.
    The last run's training log goes first, so that waiting for its files waits for this run."""
    shutil.rmtree(project / "results/train")
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=project, env=pipeline_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=ctrl_c_as_in_a_shell)


def ctrl_c_as_in_a_shell():
    """SIGINT's default action, unblocked, in the run about to start, as a shell gives a command: an
    ignored or blocked SIGINT is inherited across exec, and in two full-suite runs here the whole run
    (dvc and the training it ran) went on through six SIGINTs 10 s apart, while alone it stopped at
    the first."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for(pattern, project, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not glob.glob(str(project / pattern)):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.05)


def test_interrupted_training_leaves_a_workspace_the_next_repro_runs_cleanly(project, tmp_path):
    """Ctrl-C (SIGINT) here; the resume test below does the same after a SIGKILL."""
    set_params(project, {"train": {"learning_rate": 5e-4, "epochs": 200}})
    lock_before = (project / "dvc.lock").read_text()
    with open(tmp_path / "run.log", "w") as log:
        run = start_repro(project, log)
        wait_for("results/train/plots/metrics/loss.tsv", project, run)  # an epoch has been logged
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=60) != 0
    assert (project / "dvc.lock").read_text() == lock_before, "an interrupted run must not be recorded"

    set_params(project, {"train": {"epochs": 2}})  # the rerun only has to complete
    result = dvc("repro", "train", cwd=project)  # the stages after it never started
    assert stages_run(result.stdout) == ["train"]
    assert "Data and pipelines are up to date" in dvc("status", "train", cwd=project).stdout
    assert not list((project / "models/checkpoints").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the same model to the bit holds on CPU only")
def test_resumed_training_ends_where_an_uninterrupted_run_does(project, reproduced_project, tmp_path):
    set_params(project, {"train": {"resume": True}})
    with open(tmp_path / "run.log", "w") as log:
        run = start_repro(project, log)
        wait_for("models/checkpoints/checkpoint-*/trainer_state.json", project, run)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    assert glob.glob(str(project / "models/checkpoints/checkpoint-*")), "the checkpoint survives the kill"

    result = dvc("repro", "train", cwd=project)  # the stages after it only see its model
    assert "train: resuming the interrupted run from models/checkpoints/checkpoint-" in result.stdout
    # Same params and seed as the uninterrupted reference run (resume only adds checkpoints): the same model.
    model = "models/finetuned/model.safetensors"
    assert (project / model).read_bytes() == (reproduced_project / model).read_bytes()
    assert stages_run(dvc("repro", cwd=project).stdout) == [], "the same model: nothing after train reruns"
    assert not list((project / "models/checkpoints").iterdir()), "a completed run leaves nothing to resume"
