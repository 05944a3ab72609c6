"""train across machines: two torchrun launchers, one per "node", each in its own copy of the
reproduced project, train one model with DDP over gloo; rank 0 alone writes it, it is the model
one process trains at the same effective batch size, to float rounding, and `dvc commit` records it
on the machine that holds the repository, as the README says."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import dvc, pipeline_env, run_stages_in_process
from tests.tiny import set_params

STAGE = ["-m", "stages.train", "data/encoded", "models/pretrained", "models/finetuned", "models/checkpoints", "results/train"]
# One batch per epoch, the whole training set (180 pairs on 2 nodes x 90, or 1 process x 180), so the
# order in which the samplers deal the pairs out does not matter; dropout off, so neither do random
# masks. What is left between the runs is the order of float additions.
TRAIN = {"epochs": 8, "batch_size": 90, "eval_batch_size": 30, "learning_rate": 0.05, "warmup_steps": 0, "freeze_base": True,
         "cache_features": True}
LOGIT_TOLERANCE = 1e-5  # largest |two nodes - one process| validation logit; seen here: 2.2e-8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid, port):
    """Whether process `pid` holds a listening TCP socket on `port`."""
    import psutil

    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def start_node(rank, node, port, out, err):
    with open(out, "w") as stdout, open(err, "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
             "--master-addr=127.0.0.1", f"--master-port={port}", *STAGE],
            cwd=node, env=pipeline_env(OMP_NUM_THREADS="1"), stdout=stdout, stderr=stderr, start_new_session=True)


def launch_nodes(nodes, log_dir, timeout=300, tries=5):
    """One torchrun launcher per node; each node's (stdout, stderr) once both have exited. Their output
    goes to files, not pipes: a pipe read after the other node's fills up with progress bars and blocks
    that node mid-training, and the other with it, in their next collective.

    Node 0's launcher hosts the rendezvous store on the master port. A free port can be taken by
    another process between finding it and binding it, so node 1 starts only once node 0 is seen
    listening on the port; when node 0 could not bind it (EADDRINUSE) both start again on another."""
    logs = [(log_dir / f"node{rank}.out", log_dir / f"node{rank}.err") for rank in range(len(nodes))]
    deadline = time.monotonic() + timeout
    for _ in range(tries):
        port = free_port()
        launchers = [start_node(0, nodes[0], port, *logs[0])]
        while launchers[0].poll() is None and time.monotonic() < deadline:
            if listens_on(launchers[0].pid, port):  # the port is node 0's now: the other nodes can join
                launchers += [start_node(rank, node, port, *log) for rank, (node, log) in enumerate(zip(nodes, logs))
                              if rank]
                break
            time.sleep(0.1)
        if len(launchers) == 1 and launchers[0].poll() is not None and "EADDRINUSE" in logs[0][1].read_text():
            continue  # the port was taken before node 0 bound it, and no other node started: another port
        break  # started, or node 0 failed otherwise or hung: reported below
    else:
        raise AssertionError(f"node 0 found the master port taken {tries} times:\n{logs[0][1].read_text()[-5000:]}")
    for launcher in launchers:
        try:
            launcher.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
    for launcher in launchers:
        if launcher.poll() is None:  # the launcher and the training process it started
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs[:len(launchers)]]
    for rank, (launcher, (stdout, stderr)) in enumerate(zip(launchers, outputs)):
        assert launcher.returncode == 0, f"node {rank} exited with {launcher.returncode}:\n{(stdout + stderr)[-5000:]}"
    assert len(launchers) == len(nodes), "node 0 stopped before node 1 could start"
    return outputs


def without_dropout(project):
    config_path = project / "models/pretrained/config.json"
    config = json.loads(config_path.read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    config_path.write_text(json.dumps(config))


def validation_logits(project, model_dir):
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    val_set = load_from_disk(project / "data/encoded/val")
    batch = tokenizer.pad({name: val_set[name][:] for name in tokenizer.model_input_names}, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits, torch.tensor(val_set["label"][:])


def last_logged(log_dir, name):
    return float((log_dir / f"plots/metrics/eval/{name}.tsv").read_text().splitlines()[-1].split("\t")[-1])


def test_two_nodes_train_the_model_one_process_trains_at_the_same_effective_batch(project, tmp_path):
    set_params(project, {"train": TRAIN})
    without_dropout(project)
    nodes = [project, tmp_path / "node1"]
    shutil.copytree(project, nodes[1], symlinks=True)
    reproduced = (nodes[1] / "models/finetuned/model.safetensors").read_bytes()
    outputs = launch_nodes(nodes, tmp_path)
    assert "effective batch size 180 (2 process(es) x 90)" in outputs[0][0], "rank 0 reports"
    assert "effective batch size" not in outputs[1][0], "rank 1 does not"
    assert "find_unused_parameters" not in outputs[0][1] + outputs[1][1], "DDP's warning of a wasted pass"
    assert (project / "models/finetuned/model.safetensors").read_bytes() != reproduced, "rank 0 writes the model"
    assert (nodes[1] / "models/finetuned/model.safetensors").read_bytes() == reproduced, "rank 1 writes none"
    assert not list((project / "models/checkpoints").iterdir()) and not list((nodes[1] / "models/checkpoints").iterdir())
    eval_loss = (project / "results/train/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert len(eval_loss) == 1 + TRAIN["epochs"], "one validation loss per epoch, logged by one process"

    two_nodes, labels = validation_logits(project, project / "models/finetuned")
    # The last epoch's logged validation metrics come from predictions gathered from both nodes: they
    # are the saved model's on every validation pair once, each paired with its own label.
    loss = torch.nn.functional.cross_entropy(two_nodes, labels).item()
    assert last_logged(project / "results/train", "loss") == pytest.approx(loss, abs=1e-3)
    assert last_logged(project / "results/train", "accuracy") == pytest.approx((two_nodes.argmax(-1) == labels).float().mean().item())

    single = nodes[1]  # its training outputs are still the reproduced project's
    set_params(single, {"train": {"batch_size": 2 * TRAIN["batch_size"]}})
    run_stages_in_process(single, ["train"])  # the same command, without a third interpreter's imports
    one_process, _ = validation_logits(single, single / "models/finetuned")
    difference = (two_nodes - one_process).abs().max().item()
    print(f"largest validation logit difference, two nodes vs one process: {difference:.2e}")
    assert difference <= LOGIT_TOLERANCE
    first_loss = float(eval_loss[1].split("\t")[-1])
    assert loss < first_loss - 0.01, "the runs trained: the validation loss fell"

    # Recorded on the machine that holds the repository: train is then up to date, with the params
    # it ran with, and export sees a new model. (download and encode see the dropout-free config.json
    # this test wrote into models/pretrained.)
    dvc("commit", "--force", "train", cwd=project)
    status = json.loads(dvc("status", "--json", cwd=project).stdout)
    assert "train" not in status and status["export"] == [{"changed deps": {"models/finetuned": "modified"}}], status
