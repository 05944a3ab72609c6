"""The study's report: results/tune/<study>.json (every trial and the best, or with several
metrics the Pareto front), <study>.md (a summary with the lines that reproduce the best or front
trials) and PNG pictures drawn by Optuna's own matplotlib functions (the objective over trials, the
params' importances; with several metrics the front)."""
import json
import math
import re
import warnings
from pathlib import Path

from tune import pruning, space as search_space, storage as storages

RESULTS = "results/tune"


def _number(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def trial_record(trial):
    attrs = trial.user_attrs
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    # A queued trial's params are not sampled yet, but fixed: Optuna keeps them in a system attr.
    params = trial.params if trial.state.name != "WAITING" else trial.system_attrs.get("fixed_params", {})
    values = None if trial.values is None else [_number(v) for v in trial.values]
    record = {"number": trial.number, "state": trial.state.name, "params": params,
              "value": values[0] if values and len(values) == 1 else None, "values": values,
              "fold_values": attrs.get("fold_values"), "experiments": attrs.get("experiments", []),
              "error": attrs.get("error") or (f"its worker stopped: no heartbeat for {storages.GRACE_S} s"
                                              if trial.state.name == "FAIL" else None),
              "failed_experiment": attrs.get("failed_experiment"),
              "host": attrs.get("host"), "repo": attrs.get("repo"), "commit": attrs.get("commit"), "cpu": attrs.get("cpu"),
              "log": attrs.get("log"),
              "seconds": None if seconds is None else round(seconds, 1)}
    if attrs.get("retry_of") is not None:
        record["retry_of"] = attrs["retry_of"]
    if attrs.get("current_params"):
        record["current_params"] = True
    if attrs.get("pruned"):
        record["pruned"] = attrs["pruned"]  # fold (split.fold; null: holdout), epoch (null: after the fold), value
    return record


def pruned_text(tuner, pruned):
    return (f"pruned {pruning.pruned_where(pruned['fold'], pruned['epoch'], tuner.args.folds)} "
            f"({'running mean ' if pruned['epoch'] is None else ''}{pruned['value']:.4f})")


def apply_lines(tuner, best):
    """The commands that bring the best trial's experiment into a workspace and run the whole
    pipeline on its params (the experiments stop at the metric's stage)."""
    name = best["experiments"][0] if best["experiments"] else None
    lines = []
    stages = list(tuner.project.dvc_yaml.get("stages") or {})
    last = max((stages.index(t) for t in tuner.targets if t in stages), default=len(stages))
    later = stages[last + 1:]
    elsewhere = best.get("host") != tuner.host or best.get("repo") != str(tuner.project.root)
    if name and best.get("host") and elsewhere:
        where = best["host"] if best["host"] != tuner.host else best["repo"]
        lines.append(f"dvc exp pull origin {name}   # it ran in {where}, which shares it with `dvc exp push origin {name}`")
    if name:
        lines.append(f"dvc exp apply {name}")
    if tuner.args.folds:
        settings = " ".join(f"-S {search_space.override(k, v)}" for k, v in best["params"].items())
        lines.append(f"dvc exp run -S split.folds=null {settings}   # the best params on the holdout split, every stage")
    elif name and later:
        lines.append(f"dvc repro   # the stages after {stages[last]}: {', '.join(later)}")
    return lines


def best_of(tuner, records):
    complete = [r for r in records if r["state"] == "COMPLETE" and r["value"] is not None]
    if not complete or tuner.multi:
        return None
    pick = max if tuner.args.direction == "maximize" else min
    return pick(complete, key=lambda r: (r["value"], -r["number"]))


def is_time(key):
    """Whether a metric is a measured time (ms_per_hit, seconds, latency...), which depends on the CPU."""
    return any(part in ("ms", "s", "sec", "seconds", "time", "latency") for part in re.split(r"[_@./-]", key.lower()))


def cpu_warning(tuner, records):
    """A warning when a metric is a measured time and the complete trials ran on different CPUs, or None."""
    timed = [m.key for m in tuner.metrics if is_time(m.key)]
    cpus = sorted({r["cpu"] for r in records if r["state"] == "COMPLETE" and r.get("cpu")})
    if not timed or len(cpus) < 2:
        return None
    return (f"warning: {', '.join(timed)} were measured on {len(cpus)} different CPUs ({'; '.join(cpus)}): "
            f"a time measured on one does not compare with another's (AVX2, VNNI and AMX differ several-fold in int8)")


def per_query(tuner, record):
    """For each ms-per-hit metric, the CPU milliseconds per query at vespa.rerank_count (the trial's, or
    params.yaml's): {key: ms}."""
    count = record["params"].get("vespa.rerank_count", (tuner.project.params.get("vespa") or {}).get("rerank_count"))
    if not isinstance(count, int) or not record.get("values"):
        return {}
    return {m.key: value * count for m, value in zip(tuner.metrics, record["values"])
            if value is not None and m.key.rsplit(".", 1)[-1] == "ms_per_hit"}


# fANOVA's forest fitted to a handful of trials says little more than which params differed between
# them, and its import (scikit-learn) is most of a short run's report.
IMPORTANCES_FROM = 10


def draw(study, path, kind, metric):
    """One of Optuna's matplotlib plots into a small PNG; None, or why it could not be drawn.
    metric: the metric's name, or the names of several (kind "pareto")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "pareto":
                axes = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=metric)
            elif kind == "history":
                axes = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
            else:
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                axes = optuna.visualization.matplotlib.plot_param_importances(study, evaluator=evaluator, target_name=metric)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            plt.close("all")
            return str(err).splitlines()[0] if str(err) else type(err).__name__
        figure = axes.figure
        figure.set_size_inches(7, 4)
        figure.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(figure)
    return None


def write(tuner, study):
    """Write the report of the whole study (every worker's trials) into the project; returns its paths."""
    folder = tuner.project.root / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    name = tuner.args.study
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    best = best_of(tuner, records)
    current = next((r for r in records if r.get("current_params") and r["state"] == "COMPLETE"), None)
    # With several metrics: Optuna's best trials, the complete ones no other complete trial dominates.
    on_front = {t.number for t in study.best_trials} if tuner.multi else set()
    front = [{**{k: r[k] for k in ("number", "values", "fold_values", "params", "experiments", "host", "repo")},
              **({"ms_per_query": costs} if (costs := per_query(tuner, r)) else {}), "apply": apply_lines(tuner, r)}
             for r in records if r["number"] in on_front]
    metrics = [{"file": m.file, "key": m.key, "direction": m.direction} for m in tuner.metrics]
    record = {
        "study": name, "storage": storages.shown(tuner.url),
        "metric": metrics[0], "metrics": metrics,
        "folds": tuner.args.folds, "search_space": search_space.describe(tuner.space),
        "complete": sum(r["state"] == "COMPLETE" for r in records),
        "failed": sum(r["state"] == "FAIL" for r in records),
        "pruned": sum(r["state"] == "PRUNED" for r in records),
        "pruner": "none" if tuner.multi else tuner.args.pruner,
        "warnings": [w for w in [cpu_warning(tuner, records)] if w],
        "trials": records,
        "best": None if best is None else {**{k: best[k] for k in ("number", "value", "fold_values", "params", "experiments", "host", "repo")},
                                           "apply": apply_lines(tuner, best)},
        "current_params": None if current is None else {k: current[k] for k in ("number", "value", "values", "params")},
        **({"pareto_front": front} if tuner.multi else {}),
    }
    json_path = folder / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")

    pictures = {}
    complete = record["complete"]
    for kind in ("pareto",) if tuner.multi else ("history", "importances"):
        path = folder / f"{name}-{kind}.png"
        why = "no complete trial yet" if complete == 0 else \
            (f"fewer than {IMPORTANCES_FROM} complete trials" if kind == "importances" and complete < IMPORTANCES_FROM else None)
        why = why or draw(study, path, kind, [m.key for m in tuner.metrics] if tuner.multi else tuner.metric_key)
        if why:
            path.unlink(missing_ok=True)
        pictures[kind] = (path, why)
    md_path = folder / f"{name}.md"
    md_path.write_text(markdown(tuner, record, best, current, pictures) + "\n", encoding="utf-8")
    return {"json": json_path, "md": md_path, **{k: p for k, (p, why) in pictures.items() if not why}}


def _fmt(value):
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header, rows):
    """The lines of a markdown table (as bench/report.py writes them)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def _values(values):
    return ", ".join("" if v is None else f"{v:.4g}" for v in values)


def markdown(tuner, record, best, current, pictures):
    metric = "; ".join(f"{m.key} ({m.file}), {m.direction}d" for m in tuner.metrics)
    split = f"mean of {tuner.args.folds} folds over queries" if tuner.args.folds else "holdout split"
    lines = [f"# Study `{record['study']}`", "",
             f"{record['complete']} complete, {record['pruned']} pruned ({record['pruner']} pruner) and {record['failed']} "
             f"failed trials; {'values' if tuner.multi else 'value'}: {metric}; "
             f"{split}. Storage: `{record['storage']}`. Written by `python -m tune` (docs/tuning.md).", ""]
    lines += [f"**{warning}**" for warning in record["warnings"]] + ([""] if record["warnings"] else [])
    if best:
        lines += [f"**Best: trial {best['number']}, {tuner.metric_key} {best['value']:.4f}**"
                  + (f" (folds: {', '.join(f'{v:.4f}' for v in best['fold_values'])})" if best.get("fold_values") and len(best["fold_values"]) > 1 else "")
                  + (f"; params.yaml's current values (trial {current['number']}): {current['value']:.4f}" if current else "") + ".",
                  "", "```bash", *apply_lines(tuner, best), "```", ""]
    keys = list(tuner.space)
    if tuner.multi:
        lines += ["## Pareto front", "",
                  f"The complete trials no other complete trial beats on every one of {', '.join(m.key for m in tuner.metrics)}"
                  " (Optuna's `study.best_trials`):", ""]
        for trial in record["pareto_front"]:
            costs = "".join(f"; {v:.1f} ms of CPU per query at vespa.rerank_count" for v in trial.get("ms_per_query", {}).values())
            lines += [f"- trial {trial['number']}: {_values(trial['values'])}{costs}; "
                      + ", ".join(f"{k}={_fmt(v)}" for k, v in trial["params"].items()), "",
                      "  ```bash", *(f"  {line}" for line in trial["apply"]), "  ```", ""]
    on_front = {t["number"] for t in record.get("pareto_front", [])}
    rows = []
    for r in record["trials"]:
        values = r["values"] if r["values"] is not None else [None] * len(tuner.metrics)
        folds = "; ".join(_values(v) if isinstance(v, list) else f"{v:.4f}" for v in r["fold_values"] or []) if tuner.args.folds else ""
        outcome = ", ".join(r["experiments"]) if r["state"] == "COMPLETE" else (r["error"] or "")
        if r.get("pruned"):
            outcome = "; ".join([pruned_text(tuner, r["pruned"]), *([", ".join(r["experiments"])] if r["experiments"] else [])])
        marks = (" (best)" if best and r["number"] == best["number"] else "") + (" (front)" if r["number"] in on_front else "") \
            + (" (params.yaml)" if r.get("current_params") else "") \
            + (f" (rerun of {r['retry_of']})" if r.get("retry_of") is not None else "")
        rows.append([f"{r['number']}{marks}", r["state"], *("" if v is None else f"{v:.4f}" for v in values),
                     *([folds] if tuner.args.folds else []),
                     *(_fmt(r["params"].get(k)) if k in r["params"] else "" for k in keys),
                     outcome.replace("|", "\\|")])
    header = ["trial", "state", *(m.key for m in tuner.metrics), *(["folds"] if tuner.args.folds else []), *keys,
              "experiments (or where it was pruned, or why it failed)"]
    lines += ["## Trials", "", *table(header, rows), ""]
    lines += ["## Pictures", ""]
    for kind, title in (("pareto", "The Pareto front among the trials"), ("history", "The objective over trials"),
                        ("importances", "The params' importances (fANOVA)")):
        if kind not in pictures:
            continue
        path, why = pictures[kind]
        lines.append(f"![{title}]({Path(path).name})" if not why else f"{title}: not drawn ({why}).")
        lines.append("")
    return "\n".join(lines).rstrip()


def summary_lines(tuner, study, paths):
    record = json.loads(Path(paths["json"]).read_text())
    lines = [f"tune: study '{record['study']}': {record['complete']} complete, {record['pruned']} pruned, "
             f"{record['failed']} failed trial(s); "
             f"report: {Path(paths['md']).relative_to(tuner.project.root)}"]
    lines += [f"tune: {warning}" for warning in record["warnings"]]
    best = record["best"]
    if best:
        lines.append(f"tune: best: trial {best['number']}, {tuner.metric_key} {best['value']:.4f}; to use it:")
        lines += [f"  {line}" for line in best["apply"]]
    for trial in record.get("pareto_front", []):
        lines.append(f"tune: Pareto front: trial {trial['number']}, {', '.join(f'{m.key} {v:.4f}' for m, v in zip(tuner.metrics, trial['values']))}; "
                     f"{trial['apply'][0] if trial['apply'] else 'no experiment'}")
    return lines
