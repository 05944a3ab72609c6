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
3. pipeline: a 51,350-row synthetic CSV shaped like the CORD-19 one (bench.synthetic.realistic_pairs:
   50 queries, titles of 6-30 words, about 3 in 10 relevant) and a randomly initialised BERT-small-shaped model (4 layers,
   hidden 512, 8 heads, intermediate 2048, a 30,522-token vocabulary); a scratch copy of the
   project with the shipped params.yaml except data.url and model.name; then each stage's `cmd`
   from dvc.yaml, read at run time, in dependency order, as `dvc repro` would run them (dvc itself
   is not needed: the GPU machine does not have it).
4. full fine-tune: the train stage once more with train.freeze_base=false for --finetune-epochs
   epoch(s), for the figure that says how well training uses the GPU.

It prints and records each stage's seconds, training samples/s (dvclive's log of the Trainer), the
GPU's name and the share of its dense bf16 peak that useful compute reaches (6 FLOPs per
non-embedding parameter per real token plus attention, padding excluded:
bench.benchmark.useful_training_flops). The record goes to docs/gpu-check-<date>.md and .json, or to $OUT when that is set
(--out overrides both); it is rewritten after every step, so a run cut short leaves what it did.
docs/gpu.md says how to run it on a machine without dvc, dvclive or datasets.
"""
import argparse
import ast
import csv
import functools
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
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import yaml

from bench.benchmark import useful_training_flops
from bench.report import save, table
from bench.synthetic import (PROJECT_FILES, PROJECT_ROOT, make_scratch_project, pipeline_stages, realistic_pairs, set_params,
                             write_rows, write_tiny_bert)

ROWS = 51_392          # the CORD-19 query/title/label CSV's size (rounded down to whole queries)
QUERIES = 50           # and its number of distinct queries
RELEVANT_SHARE = 0.3   # about 1 relevant title per 2.3 irrelevant ones
BERT_SMALL = {"layers": 4, "hidden": 512, "heads": 8, "vocab": 30_522}   # google/bert_uncased_L-4_H-512_A-8
DRY_RUN_MODEL = {**BERT_SMALL, "vocab": 0}  # vocab 0: the CSV's words only (smaller files, the same layers)
TIME_LIMIT = 450       # seconds for everything: the GPU machine's 8 minutes, less its start and the wheels' install
# Dense bf16 peak, TFLOP/s, by the vendors' datasheets (no sparsity). First match of the GPU's name wins.
PEAK_TFLOPS = [("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("A100", 312), ("L4", 121)]
# What dvclive imports inside Live(): it opens the DVC repository (dvclive.dvc.get_dvc_repo).
RUNTIME_IMPORTS = ["dvc.repo", "dvc.scm", "dvc.exceptions", "scmrepo.exceptions", "dvclive.live"]
GPU_TEST_FILES = ["tests/test_train.py", "tests/test_gpu*.py"]
THIS_TEST = "tests/test_gpu_check.py"
TAIL_LINES = 40


# ----------------------------------------------------------------------------- inputs

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


# ----------------------------------------------------------------------------- running things

class Clock:
    """The time left of the whole check; every subprocess gets at most that."""

    def __init__(self, limit):
        self.start, self.limit = time.monotonic(), limit

    def elapsed(self):
        return time.monotonic() - self.start

    def left(self):
        return self.limit - self.elapsed()


def run_logged(command, cwd, env, log_path, clock, shell=False):
    """Run a command with its output in log_path, killed (its whole process group) when the check's
    time runs out. Returns (status, seconds, tail); status is 'ok', 'failed (exit N)' or 'timed out'."""
    start = time.monotonic()
    if clock.left() <= 0:
        return "timed out", 0.0, "no time left for it"
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, shell=shell, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = process.wait(timeout=max(1.0, clock.left()))
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = "timed out"
    seconds = time.monotonic() - start
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    # Progress bars rewrite one line with \r: keep the last state of each.
    tail = "\n".join(line.rsplit("\r", 1)[-1] for line in lines[-TAIL_LINES:])
    return status, seconds, tail


def child_env(project=None, stage=None, shim_dir=None):
    """The environment stages run in: this interpreter as `python`, no network, no telemetry; under
    `dvc repro` DVC_ROOT and DVC_STAGE are set, and dvclive reads them, so they are set here too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if shim_dir:
        env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', '')}"
    if project:
        env["DVC_ROOT"] = str(project)
    if stage:
        env["DVC_STAGE"] = stage
    return env


def python_shim(folder):
    """A `python` on PATH that is this interpreter (the stages' commands say `python -m ...`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    shim.chmod(0o755)
    return folder


# ----------------------------------------------------------------------------- 1. imports

def imports_in(paths):
    """Every absolute import in these Python files, function-level ones included, as
    (module, name or None); the standard library and the project's own packages left out."""
    own = {Path(name).name for name in PROJECT_FILES} | {"stages", "tests", "bench", "scorer"}
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
    return sorted(((module, name) for module, name in found
                   if module.split(".")[0] not in sys.stdlib_module_names and module.split(".")[0] not in own),
                  key=lambda pair: (pair[0], pair[1] or ""))


IMPORT_PROBE = r"""
import importlib, json, sys, time
start, results = time.monotonic(), []
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
print(json.dumps({"seconds": time.monotonic() - start, "results": results}))
"""


class ImportCheck:
    """Import, in a fresh interpreter with the stages' environment, what the pipeline's code imports.
    It runs beside the other steps (it only reads) and is waited for at the end."""

    def __init__(self, project, env, logs):
        sources = [p for p in project.rglob("*.py") if "tests" not in p.relative_to(project).parts]
        self.wanted = imports_in(sources) + [(module, None) for module in RUNTIME_IMPORTS]
        self.out, self.err = logs / "imports.json", logs / "imports.log"
        self.start = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-c", IMPORT_PROBE, json.dumps(self.wanted)], cwd=project,
                                            env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def result(self, clock):
        try:
            code = self.process.wait(timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return {"status": "timed out", "seconds": time.monotonic() - self.start, "checked": len(self.wanted),
                    "missing": []}
        if code != 0:
            return {"status": f"failed (exit {code})", "seconds": time.monotonic() - self.start,
                    "checked": len(self.wanted), "missing": [], "tail": self.err.read_text(errors="replace")[-3000:]}
        probe = json.loads(self.out.read_text().strip().splitlines()[-1])
        results = probe["results"]
        missing = [r for r in results if r["error"]]
        return {"status": "ok" if not missing else "failed", "seconds": probe["seconds"], "checked": len(results),
                "missing": missing, "imports": [r["import"] for r in results]}


# ----------------------------------------------------------------------------- 2. GPU tests

def gpu_test_files(patterns=GPU_TEST_FILES):
    files = []
    for pattern in patterns:
        files += sorted(str(p.relative_to(PROJECT_ROOT)) for p in PROJECT_ROOT.glob(pattern))
    return [f for f in dict.fromkeys(files) if f != THIS_TEST]


def run_gpu_tests(scratch, clock, patterns=GPU_TEST_FILES):
    files = gpu_test_files(patterns)
    junit = scratch / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "-rfEs",
               f"--junitxml={junit}", *files]
    status, seconds, tail = run_logged(command, PROJECT_ROOT, child_env(), scratch / "pytest.log", clock)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        for suite in ElementTree.parse(junit).getroot().iter("testsuite"):
            tests, failures = int(suite.get("tests", 0)), int(suite.get("failures", 0))
            errors, skipped = int(suite.get("errors", 0)), int(suite.get("skipped", 0))
            counts["failed"] += failures
            counts["errors"] += errors
            counts["skipped"] += skipped
            counts["passed"] += tests - failures - errors - skipped
    ok = status == "ok" and counts["failed"] == counts["errors"] == 0
    return {"status": "ok" if ok else status if status != "ok" else "failed", "seconds": seconds, "files": files,
            "command": " ".join(shlex.quote(c) for c in ["python", *command[1:-len(files)], *files]).replace(
                str(junit), "JUNIT.xml"), **counts, **({} if ok else {"tail": tail})}


# ----------------------------------------------------------------------------- 3. the pipeline

def run_stage(name, stage, project, shim_dir, logs, clock):
    commands = stage.get("cmd")
    if commands is None:
        return {"name": name, "status": "failed (no cmd: foreach/matrix stages are not supported here)", "seconds": 0.0}
    commands = [commands] if isinstance(commands, str) else list(commands)
    cwd = project / stage.get("wdir", ".")
    env = child_env(project, name, shim_dir)
    total, status, tail = 0.0, "ok", ""
    for command in commands:
        status, seconds, tail = run_logged(command, cwd, env, logs / f"{name}.log", clock, shell=True)
        total += seconds
        if status != "ok":
            break
    return {"name": name, "cmd": " && ".join(commands), "status": status, "seconds": total,
            **({} if status == "ok" else {"tail": tail})}


def train_log(project):
    """The Trainer's figures from the train stage's dvclive log, results/train/metrics.json."""
    path = project / "results/train/metrics.json"
    if not path.exists():
        return {}
    metrics = json.loads(path.read_text())
    train = metrics.get("train", {})
    return {key: value for key, value in {
        "samples_per_second": train.get("samples_per_second", metrics.get("train_samples_per_second")),
        "runtime": train.get("runtime", metrics.get("train_runtime")),
        "epochs": metrics.get("epoch"), "steps": metrics.get("step"), "loss": train.get("loss")}.items() if value is not None}


def split_pairs(project, split):
    path = project / f"data/split/{split}.csv"
    if not path.exists():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [row["query"] for row in rows], [row["title"] for row in rows]


@functools.lru_cache(maxsize=None)
def epoch_flops(model_dir, project, split):
    """The useful FLOPs of one training epoch over a split's pairs."""
    return useful_training_flops(model_dir, *split_pairs(Path(project), split))


def useful_flops(model_dir, project, split, forward_only):
    """Training FLOPs of one epoch over the split; a forward pass alone is a third of them (2 FLOPs
    per parameter per token instead of 6, and a third of attention's)."""
    flops = epoch_flops(str(model_dir), str(project), split)
    return flops / 3 if forward_only else flops


def compute_figures(flops, seconds, peak):
    if not flops or not seconds:
        return {}
    tflops = flops / seconds / 1e12
    return {"useful_tflop": flops / 1e12, "useful_tflops_per_second": tflops,
            **({"share_of_peak": tflops / peak} if peak else {})}


# ----------------------------------------------------------------------------- the record

def peak_tflops_for(gpu_name):
    """The dense bf16 peak of the first PEAK_TFLOPS entry whose words are in the GPU's name, else None."""
    return next((peak for name, peak in PEAK_TFLOPS
                 if re.search(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", gpu_name, re.IGNORECASE)), None)


def device_info(peak_option):
    import torch

    info = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None, "peak_tflops": peak_option,
            "peak_source": "--peak-tflops" if peak_option else None}
    for package in ("transformers", "accelerate", "datasets", "dvclive", "dvc", "onnx", "onnxruntime", "onnxscript",
                    "tokenizers", "huggingface_hub", "numpy", "pandas", "pyarrow", "scikit-learn"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:
            info[package] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), bf16=torch.cuda.is_bf16_supported())
        if not peak_option:
            known = peak_tflops_for(info["gpu"])
            info.update(peak_tflops=known, peak_source="table (dense bf16)" if known else None)
    return info


def failures(record):
    failed = []
    if (record.get("imports") or {}).get("status", "ok") != "ok":
        failed.append("imports")
    if (record.get("gpu_tests") or {}).get("status", "ok") not in ("ok", "skipped"):
        failed.append("GPU tests")
    for stage in record.get("stages", []):
        if stage["status"] != "ok":
            failed.append(f"stage {stage['name']}")
    if (record.get("finetune") or {}).get("status", "ok") not in ("ok", "skipped"):
        failed.append("full fine-tune")
    if record.get("figures_error") or (record.get("finetune") or {}).get("figures_error"):
        failed.append("the compute figures")
    if record.get("error"):
        failed.append("the check itself")
    return failed


def fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(record):
    device, pipeline = record["device"], record.get("pipeline", {})
    failed = failures(record)
    title = device["gpu"] or ("CPU only, dry run" if record["dry_run"] else "no GPU")
    lines = [f"# GPU check, {record['date']}, {title}", "",
             f"`{record['command']}`: **{'FAILED: ' + ', '.join(failed) if failed else 'all passed'}**"
             f"{' (not finished)' if not record.get('finished') else ''}, {fmt(record.get('seconds'))} s in all.", "",
             f"- Machine: {device['machine']}; Python {device['python']}; torch {device['torch']} (CUDA {device['cuda']}); "
             f"transformers {device['transformers']}; onnxruntime {device['onnxruntime']}; datasets {device['datasets']}; "
             f"dvclive {device['dvclive']}; dvc {device['dvc']}.",
             f"- GPU: {device['gpu'] or 'none'}" + (f", compute capability {device['capability']}, "
                                                      f"{device['gpu_memory_gib']} GiB, bf16 {device['bf16']}" if device["gpu"] else "")
             + f"; peak used for the shares below: {fmt(device['peak_tflops'])} TFLOP/s"
             + (f" ({device['peak_source']})" if device["peak_source"] else " (unknown: pass --peak-tflops)") + "."]
    if record.get("shortened"):
        lines.append(f"- **Shortened** from the shipped params: {record['shortened']}.")
    imports = record.get("imports")
    if imports:
        missing = ", ".join(f"`{m['import']}` ({m['error']})" for m in imports["missing"]) or "none"
        lines += ["", "## Imports", "", f"{imports['checked']} imports of the pipeline's code and of dvclive's `Live()` "
                  f"checked in {fmt(imports['seconds'])} s: {imports['status']}; missing: {missing}."]
    tests = record.get("gpu_tests")
    if tests and tests["status"] == "skipped":
        lines += ["", "## GPU tests", "", "Skipped (--skip-tests)."]
    elif tests:
        lines += ["", "## GPU tests", "", f"`{tests['command']}`", "",
                  f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped "
                  f"in {fmt(tests['seconds'])} s ({tests['status']})."]
        if tests.get("tail"):
            lines += ["", "```", tests["tail"], "```"]
    if pipeline:
        shape = pipeline["model"]
        lines += ["", "## Pipeline", "",
                  f"{pipeline['rows']:,} synthetic rows ({pipeline['queries']} queries; {pipeline.get('train_pairs') or '-'} "
                  f"training, {pipeline.get('val_pairs') or '-'} validation pairs); a randomly initialised BERT "
                  f"({shape['layers']} layers, hidden {shape['hidden']}, {shape['heads']} heads, vocabulary "
                  f"{shape['vocab_size']:,}); params.yaml as shipped except data.url, model.name"
                  f"{' and ' + ', '.join(f'{k}={v}' for k, v in pipeline['overrides'].items()) if pipeline['overrides'] else ''}. "
                  f"Stages run from dvc.yaml's `cmd`s without dvc, in this order; inputs made in "
                  f"{fmt(pipeline.get('inputs_seconds'))} s.", "",
                  *table(("stage", "seconds", "status"), [(s["name"], fmt(s["seconds"]), s["status"])
                                                          for s in record.get("stages", [])])]
        train = pipeline.get("train", {})
        if train:
            lines += ["", f"Train stage ({pipeline['params']['train']}): the Trainer's {fmt(train.get('samples_per_second'))} "
                      f"training samples/s over {fmt(train.get('runtime'))} s"
                      + (" (with a frozen base and cached features this is the classification head's training: the "
                         "encoder ran once over every pair before it)" if pipeline["frozen_cached"] else "") + "."]
            if train.get("figures_error"):
                lines.append(f"Useful compute: not computed ({train['figures_error']}).")
            if train.get("useful_tflops_per_second") is not None:
                lines.append(f"Useful compute, {train['flops_counted']}: {fmt(train['useful_tflop'])} TFLOP, "
                             f"{fmt(train['useful_tflops_per_second'])} TFLOP/s over the stage's {fmt(train['over_seconds'])} s"
                             + (f", {100 * train['share_of_peak']:.2f} % of the peak." if "share_of_peak" in train else "."))
        for stage in record.get("stages", []):
            if stage.get("tail"):
                lines += ["", f"`{stage['name']}` ended {stage['status']}; the end of its output:", "", "```", stage["tail"], "```"]
        evaluation = pipeline.get("eval_metrics")
        if evaluation:
            lines += ["", "Validation (results/eval/metrics.json; a random model on synthetic data, so not a quality figure): "
                      + ", ".join(f"{key} {fmt(value)}" for key, value in flatten(evaluation).items()
                                  if re.search(r"roc_auc|ndcg@10", key)) + "."]
    finetune = record.get("finetune")
    if finetune and finetune["status"] != "skipped":
        lines += ["", f"## Full fine-tune, {finetune['epochs']} epoch(s)", "",
                  f"The train stage again with train.freeze_base=false, train.epochs={finetune['epochs']}: "
                  f"{fmt(finetune.get('seconds'))} s for the stage ({finetune['status']}), the Trainer's "
                  f"{fmt(finetune.get('samples_per_second'))} samples/s over {fmt(finetune.get('runtime'))} s."]
        if finetune.get("figures_error"):
            lines.append(f"Useful compute: not computed ({finetune['figures_error']}).")
        if finetune.get("useful_tflops_per_second") is not None:
            lines.append(f"Useful compute (6 x non-embedding parameters per real token plus attention, forward and backward, "
                         f"padding excluded): {fmt(finetune['useful_tflop'])} TFLOP, "
                         f"{fmt(finetune['useful_tflops_per_second'])} TFLOP/s over the Trainer's runtime"
                         + (f", **{100 * finetune['share_of_peak']:.2f} % of the dense bf16 peak**." if "share_of_peak" in finetune else "."))
        if finetune.get("tail"):
            lines += ["", "```", finetune["tail"], "```"]
    if record.get("error"):
        lines += ["", "## The check itself failed", "", "```", record["error"], "```"]
    return "\n".join(lines)


def write_record(record, out_dir):
    name = f"gpu-check-{'dry-run-' if record['dry_run'] else ''}{record['date']}"
    return save(record, markdown(record), name, out_dir, default=str)  # paths and exceptions as text


def flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on CPU: the same steps on --rows rows (default 200) and "
                        "the model's vocabulary unpadded, to show that nothing is missing before a GPU run")
    parser.add_argument("--rows", type=int, help=f"rows of the synthetic CSV (default {ROWS:,}; 200 with --dry-run)")
    parser.add_argument("--queries", type=int, default=QUERIES, help="distinct queries (default: %(default)s)")
    parser.add_argument("--layers", type=int, help="model layers (default 4)")
    parser.add_argument("--hidden", type=int, help="model width (default 512)")
    parser.add_argument("--heads", type=int, help="attention heads (default 8)")
    parser.add_argument("--vocab", type=int, help="vocabulary size, padded with [unusedN] (default 30522; "
                        "with --dry-run only the CSV's words)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change a param of the scratch project (recorded as a shortening), e.g. train.epochs=1")
    parser.add_argument("--finetune-epochs", type=float, default=0.5, help="epochs of the extra full fine-tune run of the "
                        "train stage, for the GPU-utilisation figure; 0 skips it (default: %(default)s)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests")
    parser.add_argument("--tests", nargs="+", default=GPU_TEST_FILES, metavar="GLOB",
                        help="the GPU tests' files, globs from the repository root (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, TFLOP/s (default: from a table of "
                        + ", ".join(f"{n} {p}" for n, p in PEAK_TFLOPS) + ")")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT, help="seconds for the whole check; whatever runs "
                        "past it is stopped and recorded as timed out (default: %(default)s)")
    parser.add_argument("--no-git", action="store_true", help="do not make the scratch project a git repository "
                        "(the default when git is not installed)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, help="where the record goes (default: $OUT if set, else docs/)")
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the FLOP count loads the model: no load report
    if not args.dry_run and not torch.cuda.is_available():
        parser.exit(2, "error: PyTorch sees no CUDA device; run the check on a GPU machine, or --dry-run for the CPU check\n")
    shape = DRY_RUN_MODEL if args.dry_run else BERT_SMALL
    shape = {key: value if getattr(args, key) is None else getattr(args, key) for key, value in shape.items()}
    rows = args.rows or (200 if args.dry_run else ROWS)
    out_dir = args.out or Path(os.environ["OUT"] if os.environ.get("OUT") else PROJECT_ROOT / "docs")
    overrides = parse_overrides(args.set)
    clock = Clock(args.time_limit)
    use_git = not args.no_git and shutil.which("git") is not None
    record = {"date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S %Z"), "dry_run": args.dry_run,
              "command": "python -m bench.gpu_check " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
              "time_limit": args.time_limit, "device": device_info(args.peak_tflops), "finished": False,
              "shortened": ", ".join(f"{s}.{k}={v}" for s, values in overrides.items() for k, v in values.items()) or None}
    peak = record["device"]["peak_tflops"]
    print(f"gpu_check: {record['device']['gpu'] or 'CPU only'}; peak {peak or 'unknown'} TFLOP/s; "
          f"{rows:,} rows; time limit {args.time_limit:g} s", flush=True)

    def progress(message):
        print(f"[{clock.elapsed():6.1f} s] {message}", flush=True)
        record["seconds"] = clock.elapsed()
        write_record(record, out_dir)

    scratch = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
    import_check = None
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        logs, shim_dir = scratch / "logs", python_shim(scratch / "bin")
        logs.mkdir(exist_ok=True)

        # Inputs and the scratch project first: the import check reads the project's code.
        start = time.monotonic()
        pairs = list(zip(*realistic_pairs(args.queries, max(1, rows // args.queries), RELEVANT_SHARE)))
        csv_path = write_rows(scratch / "pairs.csv", pairs)
        model_dir = write_tiny_bert(scratch / "bert", [text for pair in pairs for text in pair[:2]], shape["hidden"],
                                    shape["layers"], shape["heads"], vocab_size=shape["vocab"], max_length=512)
        project = make_scratch_project(scratch / "project", csv_path, model_dir, overrides, use_git)
        params = yaml.safe_load((project / "params.yaml").read_text())
        vocab_size = len((model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines())
        record["pipeline"] = {
            "rows": len(pairs), "queries": len({q for q, _, _ in pairs}), "relevant_share": sum(l for *_, l in pairs) / len(pairs),
            "model": {**{k: shape[k] for k in ("layers", "hidden", "heads")}, "vocab_size": vocab_size},
            "overrides": {f"{s}.{k}": v for s, values in overrides.items() for k, v in values.items()},
            "params": {section: ", ".join(f"{k}={v}" for k, v in params[section].items() if k in (
                "epochs", "batch_size", "freeze_base", "cache_features", "precision")) for section in ("train",)},
            "frozen_cached": bool(params["train"].get("freeze_base") and params["train"].get("cache_features")),
            "git": use_git, "inputs_seconds": time.monotonic() - start, "runner": "each stage's cmd from dvc.yaml, without dvc"}
        progress(f"inputs: {len(pairs):,} rows, model {shape}, scratch project in {project}")

        import_check = ImportCheck(project, child_env(project, None, shim_dir), logs)

        if args.skip_tests:
            record["gpu_tests"] = {"status": "skipped"}
        else:
            tests = record["gpu_tests"] = run_gpu_tests(scratch, clock, args.tests)
            progress(f"GPU tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped in {tests['seconds']:.1f} s ({tests['status']})")

        record["stages"] = []
        for name, stage in pipeline_stages(project / "dvc.yaml"):
            if record["stages"] and record["stages"][-1]["status"] != "ok":
                record["stages"].append({"name": name, "status": "not run (an earlier stage failed)", "seconds": 0.0})
                continue
            result = run_stage(name, stage, project, shim_dir, logs, clock)
            record["stages"].append(result)
            if name == "split" and result["status"] == "ok":
                record["pipeline"].update({f"{split}_pairs": len(split_pairs(project, split)[0]) for split in ("train", "val")})
            progress(f"stage {name}: {result['seconds']:.1f} s, {result['status']}")

        train_stage = next((s for s in record["stages"] if s["name"] == "train"), None)
        if train_stage and train_stage["status"] == "ok":
            train = record["pipeline"]["train"] = train_log(project)
            try:
                if record["pipeline"]["frozen_cached"]:
                    flops = sum(useful_flops(model_dir, project, split, forward_only=True) for split in ("train", "val"))
                    train["flops_counted"] = ("the frozen encoder's forward pass once over the training and validation "
                                              "pairs (the head's own compute is negligible)")
                else:
                    flops = useful_flops(model_dir, project, "train", forward_only=False) * params["train"]["epochs"]
                    train["flops_counted"] = "forward and backward over the training pairs, every epoch"
                train.update(compute_figures(flops, train_stage["seconds"], peak), over_seconds=train_stage["seconds"])
            except Exception as err:  # the figure is lost, not the rest of the check
                train["figures_error"] = record["figures_error"] = f"{type(err).__name__}: {err}"
            progress(f"train: {fmt(train.get('samples_per_second'))} samples/s (Trainer), "
                     f"{fmt(train.get('useful_tflops_per_second'))} useful TFLOP/s over the stage")
        record["imports"] = import_check.result(clock)
        missing = ", ".join(m["import"] for m in record["imports"]["missing"])
        progress(f"imports: {record['imports']['checked']} checked, {record['imports']['status']}"
                 + (f"; missing: {missing}" if missing else ""))
        if (project / "results/eval/metrics.json").exists():
            record["pipeline"]["eval_metrics"] = json.loads((project / "results/eval/metrics.json").read_text())

        record["finetune"] = run_finetune(args.finetune_epochs, project, pipeline_stages(project / "dvc.yaml"), model_dir,
                                          shim_dir, logs, clock, peak, train_stage)
        if record["finetune"]["status"] != "skipped":
            progress(f"full fine-tune: {fmt(record['finetune'].get('seconds'))} s ({record['finetune']['status']}), "
                     f"{fmt(record['finetune'].get('samples_per_second'))} samples/s, "
                     f"{fmt(record['finetune'].get('share_of_peak'))} of peak")
    except Exception:
        import traceback

        record["error"] = traceback.format_exc()
        print(record["error"], file=sys.stderr)
    finally:
        if import_check and "imports" not in record:
            record["imports"] = import_check.result(clock)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    record["finished"] = True
    record["seconds"] = clock.elapsed()
    path = write_record(record, out_dir)
    print("\n" + markdown(record) + f"\n\nRecord: {path} and {path.with_suffix('.json')}")
    return 1 if failures(record) else 0


def run_finetune(epochs, project, stages, model_dir, shim_dir, logs, clock, peak, train_stage):
    """The train stage once more, training the whole model: how much of the GPU real training uses."""
    train = dict(stages).get("train")
    if not epochs or train is None:
        return {"status": "skipped"}
    if not train_stage or train_stage["status"] != "ok":
        return {"status": "not run (the pipeline's train stage failed)", "epochs": epochs}
    epochs = int(epochs) if float(epochs).is_integer() else epochs
    set_params(project, {"train": {"freeze_base": False, "epochs": epochs}})
    result = run_stage("train", train, project, shim_dir, logs, clock)
    figures = {"status": result["status"], "epochs": epochs, "seconds": result["seconds"], **({"tail": result["tail"]}
                                                                                               if "tail" in result else {})}
    if result["status"] == "ok":
        log = train_log(project)
        figures.update(samples_per_second=log.get("samples_per_second"), runtime=log.get("runtime"))
        try:
            # The Trainer evaluates after every epoch, a partial last one included: a forward pass over val.
            flops = (epochs * useful_flops(model_dir, project, "train", forward_only=False)
                     + math.ceil(epochs) * useful_flops(model_dir, project, "val", forward_only=True))
            figures.update(compute_figures(flops, log.get("runtime"), peak))
        except Exception as err:
            figures["figures_error"] = f"{type(err).__name__}: {err}"
    return figures


if __name__ == "__main__":
    sys.exit(main())
