"""One command that checks the GPU paths on a CUDA machine (one H100/H200: under 8 minutes).

    python -m bench.gpu_check                          # on the GPU machine
    python -m bench.gpu_check --dry-run                # here, on CPU: the same steps on 200 rows
    python -m bench.gpu_check --peak-tflops 500        # a GPU the peak table does not know

Steps, each timed; a failing step never stops the later ones (except that a failed stage stops
the stages after it), and any failure makes the exit status 1:

1. imports: every module the pipeline's code imports (found by reading its source, so new stages
   are covered), plus what dvclive imports when a stage creates `Live(...)`, is importable here.
2. GPU tests: pytest on tests/test_train.py and every tests/test_gpu*.py (but this check's own
   test), without the project's xdist addopts; passed/failed/skipped counts.
3. pipeline: a 51,392-row synthetic CSV shaped like the CORD-19 one (bench.synthetic.realistic_pairs:
   50 queries, titles of 6-30 words, about 3 in 10 relevant) and a randomly initialised BERT-small-shaped
   model (4 layers, hidden 512, 8 heads, intermediate 2048, a 30,522-token vocabulary); a scratch copy of
   the project with the shipped params.yaml except data.url and model.name; then each stage's `cmd`
   from dvc.yaml, read at run time, in dependency order, as `dvc repro` would run them (dvc itself
   is not needed: the GPU machine does not have it).
4. full fine-tune: the train stage once more with train.freeze_base=false for --finetune-epochs
   epoch(s), for the figure that says how well training uses the GPU.

It prints and records each step's seconds, training samples/s (dvclive's log of the Trainer), the
GPU's name and the share of its dense bf16 peak that useful compute reaches (6 FLOPs per
non-embedding parameter per real token plus attention, padding excluded:
bench.benchmark.useful_training_flops). The record goes to docs/gpu-check-<date>.md and .json, or to
$OUT when that is set (--out overrides both); it is rewritten after every step, so a run cut short
leaves what it did. docs/gpu.md says how to run it on a machine without dvc, dvclive or datasets.
"""
import argparse
import ast
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from bench.benchmark import useful_training_flops
from bench.report import save, table
from bench.synthetic import (PROJECT_ROOT, make_scratch_project, pipeline_stages, realistic_pairs, set_params, write_rows,
                             write_tiny_bert)
from stages.common import read_pairs

ROWS = 51_392          # the CORD-19 query/title/label CSV's size (rounded down to whole queries)
QUERIES = 50           # and its number of distinct queries
RELEVANT_SHARE = 0.3   # about 1 relevant title per 2.3 irrelevant ones
BERT_SMALL = {"layers": 4, "hidden_size": 512, "heads": 8}   # google/bert_uncased_L-4_H-512_A-8
VOCAB = 30_522         # BERT's; the dry run's is the CSV's words only (smaller files, the same layers)
TIME_LIMIT = 450       # seconds for everything: the GPU machine's 8 minutes, less its start and the wheels' install
# Dense bf16 peak, TFLOP/s, by the vendors' datasheets (no sparsity). First match of the GPU's name wins.
PEAK_TFLOPS = [("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("A100", 312), ("L4", 121)]
# What dvclive imports inside Live(): it opens the DVC repository (dvclive.dvc.get_dvc_repo).
RUNTIME_IMPORTS = ["dvc.repo", "dvc.scm", "dvc.exceptions", "scmrepo.exceptions", "dvclive.live"]
GPU_TESTS = ["tests/test_train.py", "tests/test_gpu*.py"]
THIS_TEST = "tests/test_gpu_check.py"
TAIL_LINES = 40


def parse_overrides(settings):
    """['train.epochs=1', ...] -> {'train': {'epochs': 1}}; values are YAML."""
    overrides = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"error: --set {setting}: expected SECTION.KEY=VALUE, e.g. train.epochs=1")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return overrides


def run_logged(command, cwd, env, log_path, deadline, shell=False):
    """Run a command with its output in log_path, killed (its whole process group) at `deadline`
    (time.monotonic()). Returns (status, seconds, tail); status is 'ok', 'failed (exit N)' or 'timed out'."""
    start = time.monotonic()
    if deadline <= start:
        return "timed out", 0.0, "no time left for it"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, shell=shell, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = process.wait(timeout=max(1.0, deadline - start))
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = "timed out"
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-TAIL_LINES:]
    # Progress bars rewrite one line with \r: keep the last state of each.
    return status, time.monotonic() - start, "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def child_env(shim_dir=None, project=None, stage=None):
    """The environment stages run in: `python` on PATH is this interpreter (shim_dir's), no network, no
    telemetry; under `dvc repro` DVC_ROOT and DVC_STAGE are set, and dvclive reads them, so they are set here too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if shim_dir:
        (shim_dir / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        (shim_dir / "python").chmod(0o755)
        env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **({"DVC_ROOT": str(project)} if project else {}), **({"DVC_STAGE": stage} if stage else {})}


# ----------------------------------------------------------------------------- 1. imports

def imports_in(paths):
    """Every absolute import in these Python files, function-level ones included, as
    (module, name or None); the standard library and the project's own packages left out."""
    found = set()
    for path in paths:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
        # `try: import a / except ImportError: import b` imports one of two: neither is required.
        optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name) and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers) for part in (node.body, *(h.body for h in node.handlers))
            for statement in part for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                found.update((alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.update((node.module, alias.name) for alias in node.names)
    own = sys.stdlib_module_names | {"stages", "tests", "bench", "scorer"}
    return sorted(((module, name) for module, name in found if module.split(".")[0] not in own),
                  key=lambda pair: (pair[0], pair[1] or ""))


IMPORT_PROBE = r"""
import importlib, json, sys
results = []
for module, name in json.loads(sys.argv[1]):
    try:
        imported = importlib.import_module(module)
        if name is not None and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")
        error = None
    except Exception as err:
        error = f"{type(err).__name__}: {err}".splitlines()[0]
    results.append({"import": module + (f".{name}" if name else ""), "error": error,
                    "from": getattr(sys.modules.get(module.split(".")[0]), "__file__", None)})
open(sys.argv[2], "w").write(json.dumps(results))
"""


def check_imports(project, env, logs, deadline):
    """Import, in a fresh interpreter with the stages' environment, what the pipeline's code (its tests
    left out) imports, and what dvclive's Live() imports at run time."""
    wanted = imports_in(p for p in project.rglob("*.py") if "tests" not in p.relative_to(project).parts)
    wanted += [(module, None) for module in RUNTIME_IMPORTS]
    status, seconds, tail = run_logged([sys.executable, "-c", IMPORT_PROBE, json.dumps(wanted), str(logs / "imports.json")],
                                       project, env, logs / "imports.log", deadline)
    results = json.loads((logs / "imports.json").read_text()) if status == "ok" else []
    missing = [result for result in results if result["error"]]
    return {"name": "imports", "status": "failed" if missing else status, "seconds": seconds, "missing": missing,
            "imports": [result["import"] for result in results], **({} if status == "ok" else {"tail": tail}),
            "detail": f"{len(wanted)} imports of the pipeline's code and of dvclive's `Live()`; missing: "
                      + (", ".join(f"`{m['import']}` ({m['error']})" for m in missing) or "none" if results else "not known")}


# ----------------------------------------------------------------------------- 2. GPU tests

def run_gpu_tests(scratch, deadline):
    files = [f for f in dict.fromkeys(str(path.relative_to(PROJECT_ROOT)) for pattern in GPU_TESTS
                                      for path in sorted(PROJECT_ROOT.glob(pattern))) if f != THIS_TEST]
    options, junit = ["-p", "no:cacheprovider", "-o", "addopts=", "-q", "-rfEs"], scratch / "junit.xml"
    status, seconds, tail = run_logged([sys.executable, "-m", "pytest", *options, f"--junitxml={junit}", *files],
                                       PROJECT_ROOT, child_env(), scratch / "pytest.log", deadline)
    totals = Counter()
    for suite in ElementTree.parse(junit).getroot().iter("testsuite") if junit.exists() else []:
        totals.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
    counts = {"passed": totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"],
              "failed": totals["failures"], "errors": totals["errors"], "skipped": totals["skipped"]}
    status = "failed" if status == "ok" and (counts["failed"] or counts["errors"]) else status
    return {"name": "GPU tests", "status": status, "seconds": seconds, **counts, **({} if status == "ok" else {"tail": tail}),
            "detail": f"`{' '.join(['python -m pytest', *options, *files])}`: "
                      + ", ".join(f"{count} {outcome}" for outcome, count in counts.items())}


# ----------------------------------------------------------------------------- 3. the pipeline and 4. the fine-tune

def run_stage(name, stage, project, shim_dir, logs, deadline):
    if stage.get("cmd") is None:
        return {"name": name, "status": "failed (no cmd: foreach/matrix stages are not supported here)", "seconds": 0.0}
    command = " && ".join([stage["cmd"]] if isinstance(stage["cmd"], str) else stage["cmd"])
    status, seconds, tail = run_logged(command, project / stage.get("wdir", "."), child_env(shim_dir, project, name),
                                       logs / f"{name}.log", deadline, shell=True)
    return {"name": name, "cmd": command, "status": status, "seconds": seconds, **({} if status == "ok" else {"tail": tail})}


def train_log(project):
    """The Trainer's figures from the train stage's report, results/train/report.json."""
    metrics = json.loads((project / "results/train/report.json").read_text())
    return {"samples_per_second": metrics["train"]["samples_per_second"], "runtime": metrics["train"]["runtime"],
            "epochs": metrics.get("epoch"), "steps": metrics.get("optimizer_steps"), "loss": metrics["train"].get("loss")}


def split_pairs(project, split):
    pairs = pd.concat(read_pairs(project / f"data/split/{split}.csv"))
    return pairs["query"].tolist(), pairs["title"].tolist()


def add_training_figures(step, project, flops, counted, peak, seconds=None):
    """The Trainer's samples/s, and useful compute over `seconds` (default: the Trainer's runtime): `flops()`'s
    TFLOP, TFLOP/s and share of the peak. A failure loses the figures (figures_error), not the rest of the check."""
    try:
        step.update(train_log(project))
        seconds = seconds or step["runtime"]
        tflops = flops() / seconds / 1e12
        step.update(useful_tflop=flops() / 1e12, useful_tflops_per_second=tflops, flops_counted=counted,
                    **({"share_of_peak": tflops / peak} if peak else {}))
        step["detail"] = (f"the Trainer's {fmt(step['samples_per_second'])} training samples/s over {fmt(step['runtime'])} s; "
                          f"useful compute, {counted}: {fmt(step['useful_tflop'])} TFLOP, {fmt(tflops)} TFLOP/s over "
                          f"{fmt(seconds)} s" + (f", **{100 * tflops / peak:.2f} % of the dense bf16 peak**" if peak else ""))
    except Exception as err:
        step["figures_error"] = f"{type(err).__name__}: {err}"
        step["detail"] = f"training figures not computed ({step['figures_error']})"


# ----------------------------------------------------------------------------- the record

def peak_tflops_for(gpu_name):
    """The dense bf16 peak of the first PEAK_TFLOPS entry whose words are in the GPU's name, else None."""
    return next((peak for name, peak in PEAK_TFLOPS
                 if re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", gpu_name, re.IGNORECASE)), None)


def device_info(peak_option):
    import torch

    info = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None, "peak_tflops": peak_option,
            "peak_source": "--peak-tflops" if peak_option else None,
            "packages": {(d.metadata.get("Name") or "").lower(): d.version for d in importlib.metadata.distributions()}}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1),
                    bf16=torch.cuda.is_bf16_supported())
        if not peak_option:
            known = peak_tflops_for(info["gpu"])
            info.update(peak_tflops=known, peak_source="table (dense bf16)" if known else None)
    return info


def failures(record):
    """The steps that failed (a test, a stage, ...) or lost their compute figures, and the check itself if it broke."""
    return ([step["name"] + (" (compute figures)" if step["status"] == "ok" else "") for step in record["steps"]
             if step["status"] not in ("ok", "skipped") or "figures_error" in step]
            + (["the check itself"] if record.get("error") else []))


def fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(record):
    device, pipeline, failed = record["device"], record.get("pipeline"), failures(record)
    packages = ("transformers", "onnxruntime", "datasets", "dvclive", "dvc")
    lines = [f"# GPU check, {record['date']}, {device['gpu'] or ('CPU only, dry run' if record['dry_run'] else 'no GPU')}", "",
             f"`{record['command']}`: **{'FAILED: ' + ', '.join(failed) if failed else 'all passed'}**"
             f"{'' if record['finished'] else ' (not finished)'}, {fmt(record.get('seconds'))} s in all.", "",
             f"- Machine: {device['machine']}; Python {device['python']}; torch {device['torch']} (CUDA {device['cuda']}); "
             + "; ".join(f"{name} {device['packages'].get(name)}" for name in packages) + ".",
             f"- GPU: {device['gpu'] or 'none'}"
             + (f", compute capability {device['capability']}, {device['gpu_memory_gib']} GiB, bf16 {device['bf16']}"
                if device["gpu"] else "")
             + f"; peak used for the shares below: {fmt(device['peak_tflops'])} TFLOP/s"
             + (f" ({device['peak_source']})." if device["peak_source"] else " (unknown: pass --peak-tflops).")]
    if record.get("shortened"):
        lines.append(f"- **Shortened** from the shipped params: {record['shortened']}.")
    if pipeline:
        lines.append(
            f"- Pipeline: {pipeline['rows']:,} synthetic rows ({pipeline['queries']} queries; "
            f"{pipeline.get('train_pairs') or '-'} training, {pipeline.get('val_pairs') or '-'} validation pairs); a randomly "
            f"initialised BERT ({pipeline['model']}); params.yaml as shipped except data.url and model.name"
            + (" (and the shortening above)" if record["shortened"] else "")
            + f"; train {pipeline['train_params']}. Each stage's `cmd` from dvc.yaml, without dvc, in the order below"
            + (". With a frozen base and cached features the Trainer trains the classification head: the encoder ran once "
               "over every pair before it." if pipeline["frozen_cached"] else "."))
    lines += ["", *table(("step", "seconds", "status", "what it measured"),
                         [(s["name"], fmt(s["seconds"]), s["status"], s.get("detail", "")) for s in record["steps"]])]
    if pipeline and pipeline.get("eval_metrics"):
        lines += ["", "Validation (results/eval/metrics.json; a random model on synthetic data, so not a quality figure): "
                  + ", ".join(f"{model}.{key} {fmt(values[key])}" for model, values in pipeline["eval_metrics"].items()
                              if isinstance(values, dict) for key in ("roc_auc", "ndcg@10") if key in values) + "."]
    for step in record["steps"]:
        if step.get("tail"):
            lines += ["", f"`{step['name']}` ended {step['status']}; the end of its output:", "", "```", step["tail"], "```"]
    if record.get("error"):
        lines += ["", "## The check itself failed", "", "```", record["error"], "```"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on CPU: the same steps on --rows rows (default 200) and "
                        "the model's vocabulary unpadded, to show that nothing is missing before a GPU run")
    parser.add_argument("--rows", type=int, help=f"rows of the synthetic CSV (default {ROWS:,}; 200 with --dry-run)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change a param of the scratch project (recorded as a shortening), e.g. train.epochs=1")
    parser.add_argument("--finetune-epochs", type=float, default=0.5, help="epochs of the extra full fine-tune run of the "
                        "train stage, for the GPU-utilisation figure; 0 skips it (default: %(default)s)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, TFLOP/s (default: from a table of "
                        + ", ".join(f"{n} {p}" for n, p in PEAK_TFLOPS) + ")")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds for the whole check; whatever runs "
                        "past it is stopped and recorded as timed out (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, help="where the record goes (default: $OUT if set, else docs/)")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the FLOP count loads the model: no load report
    if not args.dry_run and not torch.cuda.is_available():
        parser.exit(2, "error: PyTorch sees no CUDA device; run the check on a GPU machine, or --dry-run for the CPU check\n")
    rows, overrides = args.rows or (200 if args.dry_run else ROWS), parse_overrides(args.set)
    out_dir = args.out or Path(os.environ.get("OUT") or PROJECT_ROOT / "docs")
    start = time.monotonic()
    deadline = start + args.time_limit
    record = {"date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S %Z"), "dry_run": args.dry_run,
              "command": shlex.join(["python", "-m", "bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
              "time_limit": args.time_limit, "device": device_info(args.peak_tflops), "finished": False, "steps": [],
              "shortened": ", ".join(f"{s}.{k}={v}" for s, values in overrides.items() for k, v in values.items()) or None}
    peak = record["device"]["peak_tflops"]
    print(f"gpu_check: {record['device']['gpu'] or 'CPU only'}; peak {peak or 'unknown'} TFLOP/s; "
          f"{rows:,} rows; time limit {args.time_limit:g} s", flush=True)

    def done(step):
        """Record a finished step, print it and rewrite the record; returns the record's markdown path."""
        record["seconds"] = time.monotonic() - start
        if step:
            record["steps"].append(step)
            print(f"[{record['seconds']:6.1f} s] {step['name']}: {fmt(step['seconds'])} s, {step['status']}"
                  + (f"; {step['detail']}" if step.get("detail") else ""), flush=True)
        return save(record, markdown(record), f"gpu-check-{'dry-run-' if args.dry_run else ''}{record['date']}", out_dir,
                    default=str)  # paths and exceptions as text

    scratch = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
    import_check = None
    try:
        logs, shim_dir = scratch / "logs", scratch / "bin"
        logs.mkdir(parents=True, exist_ok=True)
        shim_dir.mkdir(exist_ok=True)
        # Inputs and the scratch project first: the import check reads the project's code.
        pairs = list(zip(*realistic_pairs(QUERIES, max(1, rows // QUERIES), RELEVANT_SHARE)))
        model_dir = write_tiny_bert(scratch / "bert", [text for pair in pairs for text in pair[:2]], **BERT_SMALL,
                                    vocab_size=0 if args.dry_run else VOCAB, max_length=512)
        use_git = shutil.which("git") is not None
        csv_path = write_rows(scratch / "pairs.csv", pairs)
        project = make_scratch_project(scratch / "project", csv_path, model_dir, overrides, use_git)
        train_params = yaml.safe_load((project / "params.yaml").read_text())["train"]
        vocab = len((model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
        record["pipeline"] = {
            "rows": len(pairs), "queries": len({q for q, _, _ in pairs}),
            "relevant_share": sum(label for *_, label in pairs) / len(pairs),
            "model": f"{BERT_SMALL['layers']} layers, hidden {BERT_SMALL['hidden_size']}, {BERT_SMALL['heads']} heads, "
                     f"vocabulary {vocab:,}", "git": use_git,
            "train_params": ", ".join(f"{k}={v}" for k, v in train_params.items() if k in (
                "epochs", "batch_size", "freeze_base", "cache_features", "precision")),
            "frozen_cached": bool(train_params.get("freeze_base") and train_params.get("cache_features"))}
        done({"name": "inputs", "status": "ok", "seconds": time.monotonic() - start, "detail": f"scratch project in {project}"})

        # It only reads, so it runs beside the other steps and is waited for at the end.
        import_check = ThreadPoolExecutor(1).submit(check_imports, project, child_env(shim_dir, project), logs, deadline)
        done({"name": "GPU tests", "status": "skipped", "seconds": 0.0} if args.skip_tests else run_gpu_tests(scratch, deadline))

        @functools.cache
        def epoch_flops(split):
            """Useful FLOPs of one training epoch over a split's pairs, forward and backward (a forward pass: a third)."""
            return useful_training_flops(model_dir, *split_pairs(project, split))

        stages, failed_stage = dict(pipeline_stages(project / "dvc.yaml")), None
        for name, stage in stages.items():
            if failed_stage:
                done({"name": name, "status": f"not run ({failed_stage} failed)", "seconds": 0.0})
                continue
            step = run_stage(name, stage, project, shim_dir, logs, deadline)
            failed_stage = name if step["status"] != "ok" else None
            if name == "split" and not failed_stage:
                record["pipeline"].update({f"{split}_pairs": len(split_pairs(project, split)[0]) for split in ("train", "val")})
            if name == "train" and not failed_stage and record["pipeline"]["frozen_cached"]:
                add_training_figures(step, project, lambda: (epoch_flops("train") + epoch_flops("val")) / 3,
                                     "the frozen encoder's forward pass once over the training and validation pairs "
                                     "(the head's own compute is negligible)", peak, step["seconds"])
            elif name == "train" and not failed_stage:
                add_training_figures(step, project, lambda: epoch_flops("train") * train_params["epochs"],
                                     "forward and backward over the training pairs, every epoch", peak, step["seconds"])
            done(step)
        if (project / "results/eval/metrics.json").exists():
            record["pipeline"]["eval_metrics"] = json.loads((project / "results/eval/metrics.json").read_text())

        epochs = int(args.finetune_epochs) if args.finetune_epochs.is_integer() else args.finetune_epochs
        name = f"full fine-tune, {epochs} epoch(s)"
        if not epochs or "train" not in stages:
            done({"name": name, "status": "skipped", "seconds": 0.0})
        elif any(step["name"] == "train" and step["status"] != "ok" for step in record["steps"]):
            done({"name": name, "status": "not run (the pipeline's train stage failed)", "seconds": 0.0})
        else:  # the train stage once more, training the whole model: how much of the GPU real training uses
            set_params(project, {"train": {"freeze_base": False, "epochs": epochs}})
            step = {**run_stage("train", stages["train"], project, shim_dir, logs, deadline), "name": name, "epochs": epochs}
            if step["status"] == "ok":
                # The Trainer evaluates after every epoch, a partial last one included: a forward pass over val.
                add_training_figures(step, project,
                                     lambda: epochs * epoch_flops("train") + math.ceil(epochs) * epoch_flops("val") / 3,
                                     "forward and backward over the training pairs, and a forward pass over the validation "
                                     "pairs after each epoch", peak)
            done(step)
        done(import_check.result())
    except Exception:
        record["error"] = traceback.format_exc()
        print(record["error"], file=sys.stderr)
    finally:
        if import_check and not any(step["name"] == "imports" for step in record["steps"]):
            record["steps"].append(import_check.result())
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    record["finished"] = True
    path = done(None)
    print("\n" + markdown(record) + f"\n\nRecord: {path} and {path.with_suffix('.json')}")
    return 1 if failures(record) else 0


if __name__ == "__main__":
    sys.exit(main())
