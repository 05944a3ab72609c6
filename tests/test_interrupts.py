"""An interrupted run: Ctrl-C during training records nothing, and with train.resume the next `dvc
repro` continues from the Trainer's last checkpoint to the same result. (One run proves both: each
`dvc repro` here starts an interpreter that imports torch and transformers, most of the test's time.)"""
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the same model to the bit holds on CPU only")
def test_ctrl_c_records_nothing_and_the_next_repro_resumes_to_the_uninterrupted_model(project, reproduced_project, tmp_path):
    """Ctrl-C (SIGINT to dvc and the stage) after the Trainer's first checkpoint: dvc.lock is as it
    was, the checkpoint stays, and the next `dvc repro` resumes from it to the model, to the bit, that
    the same params train without a break (reproduced_project's)."""
    set_params(project, {"train": {"resume": True}})
    lock_before = (project / "dvc.lock").read_text()
    with open(tmp_path / "run.log", "w") as log:
        run = start_repro(project, log)
        wait_for("models/checkpoints/checkpoint-*/trainer_state.json", project, run)
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=60) != 0, (tmp_path / "run.log").read_text()
    assert (project / "dvc.lock").read_text() == lock_before, "an interrupted run must not be recorded"
    assert glob.glob(str(project / "models/checkpoints/checkpoint-*")), "the checkpoint survives the interrupt"

    result = dvc("repro", "train", cwd=project)  # the stages after it only see its model
    assert stages_run(result.stdout) == ["train"]
    assert "train: resuming the interrupted run from models/checkpoints/checkpoint-" in result.stdout
    # Same params and seed as the uninterrupted reference run (resume only adds checkpoints): the same model.
    model = "models/finetuned/model.safetensors"
    assert (project / model).read_bytes() == (reproduced_project / model).read_bytes()
    assert stages_run(dvc("repro", cwd=project).stdout) == [], "the same model: nothing after train reruns"
    assert not list((project / "models/checkpoints").iterdir()), "a completed run leaves nothing to resume"
