"""vespa: write a Vespa application package that serves the model the way the CORD-19 search app
runs it: titles retrieved by BM25, the top vespa.rerank_count hits reranked by the model in the
global phase; and measure, before anyone deploys, what a reranked hit costs and how the package
ranks the validation pairs. Deploy it as it is (`vespa deploy models/vespa`); docs/vespa.md.

The title's tokens are a tensor attribute filled by `embed tokenizer` (the hugging-face-tokenizer
component on the shipped tokenizer.json), the query's come from `embed(tokenizer, @query)`, and the
model's inputs are built from both by Vespa's token features at L tokens (stages/vespa_hits.py).
L is vespa.max_length, or with `auto` the shortest multiple of 8 that holds vespa.length_coverage
of the training and validation pairs. A model whose tokenizer joins a pair otherwise (RoBERTa's
double separator) gets a one-line reason, NOT_SERVABLE.txt, instead of a package.

The package's file is vespa.model: one of the candidates of stages/vespa_files.py (model.onnx,
model.int8.onnx, and files built here for Vespa's shape: per-tensor int8, a fused graph), or with
`auto` the cheapest per hit of those that rank the validation pairs as model.onnx does (nDCG@10 and
ROC-AUC at most vespa.max_ranking_drop below) and score deterministically (a hit scored again in a
fresh session, at 1 and at 4 intra-op threads, gives the same logits).

results/vespa/report.json: for each candidate, milliseconds per hit (median, p99) and CPU
milliseconds per query at L, batch 1, as Vespa runs it on this machine, GFLOP per hit, and the
ranking metrics on the inputs Vespa builds, one hit at a time; the served file's figures again under
`served`; the scorer's float32 metrics (evaluate's) on the same pairs. results/vespa/metrics.json,
the stage's DVC metrics, holds L and the served file's name, cost and ranking (METRICS).
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

from stages.common import (StageError, atomic_paths, cpu_description, headline, load_params, report_path, run, sample_queries,
                           write_json)
from stages.vespa_files import FILES, UNFUSED, build_candidates, gflop_per_hit

# results/vespa/metrics.json: what the shipped package costs and how it ranks; report.json beside it holds
# every candidate file's figures, the scorer's, the counts and the machine.
METRICS = ("servable", "max_length", *(f"served.{name}" for name in ("file", "ms_per_hit", "cpu_ms_per_query", "ndcg@10", "roc_auc")))
RANKING_CHECKS = ("ndcg@10", "roc_auc")  # a candidate ranks as model.onnx does when neither drops more than allowed
# Vespa's tokenInputIds hard-codes these: [CLS] and [SEP] of the bert-base-uncased vocabulary.
VESPA_CLS, VESPA_SEP = 101, 102
QUERY, TITLE = "query(q_tokens)", "attribute(title_tokens)"


def separators(tokenizer, inputs):
    """(cls, sep) when the tokenizer joins a pair as CLS query SEP title SEP with the token types
    Vespa gives them; else the reason Vespa's token features cannot build this model's inputs."""
    query, title = "query", "title"
    pair = tokenizer.encode(query, title)
    alone = [tokenizer.encode(text, add_special_tokens=False).ids for text in (query, title)]
    cls, sep = pair.ids[0], pair.ids[1 + len(alone[0])]
    expected = [cls, *alone[0], sep, *alone[1], sep]
    template = " ".join(pair.tokens)
    if pair.ids != expected:
        return None, (f"the tokenizer joins a pair as '{template}', and Vespa's token features put one separator "
                      f"between query and title (CLS query SEP title SEP)")
    types = [0] * (2 + len(alone[0])) + [1] * (1 + len(alone[1]))
    if "token_type_ids" in inputs and pair.type_ids != types:
        return None, f"the tokenizer gives '{template}' token types {pair.type_ids}, and Vespa's tokenTypeIds gives {types}"
    return (cls, sep), None


def rank_profile(metadata, length, cls, sep, rerank_count):
    """BM25 first, then the model on the top hits; the score is P(relevant) as metadata.json says."""
    from vespa.package import Function, GlobalPhaseRanking, RankProfile

    arguments = f"{length}, {QUERY}, {TITLE}"
    input_ids = (f"tokenInputIds({arguments})" if (cls, sep) == (VESPA_CLS, VESPA_SEP)
                 else f"customTokenInputIds({cls}, {sep}, {arguments})")
    features = {"input_ids": input_ids, "token_type_ids": f"tokenTypeIds({arguments})",
                "attention_mask": f"tokenAttentionMask({arguments})"}
    relevant = metadata["labels"].index("relevant")
    if metadata["probability"] == "sigmoid":
        score = f"sigmoid(reduce(logits{{d1:{relevant}}}, sum))"
    else:  # softmax over two logits: P(relevant) = sigmoid(relevant - other)
        score = f"sigmoid(reduce(logits{{d1:{relevant}}} - logits{{d1:{1 - relevant}}}, sum))"
    functions = [Function(name, features[name]) for name in metadata["inputs"]]
    return RankProfile(name="rerank", inputs=[(QUERY, f"tensor<float>(d0[{length}])")], first_phase="bm25(title)",
                       functions=[*functions, Function("logits", "onnx(relevance).logits")],
                       global_phase=GlobalPhaseRanking(expression=score, rerank_count=rerank_count),
                       summary_features=["firstPhase"])


def write_package(models_dir, package_dir, model_path, length, params, cls, sep):
    from vespa.package import (ApplicationPackage, Component, Document, Field, FieldSet, OnnxModel, Parameter,
                               Schema)

    metadata = json.loads((models_dir / "metadata.json").read_text(encoding="utf-8"))
    schema = Schema(name="doc", document=Document(fields=[
        Field(name="title", type="string", indexing=["index", "summary"], index="enable-bm25")]))
    schema.add_fields(Field(name="title_tokens", type=f"tensor<float>(d0[{length}])",
                            indexing=["input title", "embed tokenizer", "attribute"], is_document_field=False))
    schema.add_field_set(FieldSet(name="default", fields=["title"]))
    schema.add_model(OnnxModel(model_name="relevance", model_file_path=str(model_path),
                               inputs={name: name for name in metadata["inputs"]}, outputs={"logits": "logits"}))
    schema.add_rank_profile(rank_profile(metadata, length, cls, sep, params["rerank_count"]))
    tokenizer = Component(id="tokenizer", type="hugging-face-tokenizer",
                          parameters=[Parameter("model", {"path": "models/tokenizer.json"})])
    ApplicationPackage(name="relevance", schema=[schema], components=[tokenizer]).to_files(package_dir)
    (package_dir / "models").mkdir(exist_ok=True)
    shutil.copyfile(models_dir / "tokenizer.json", package_dir / "models/tokenizer.json")
    # pyvespa's OnnxModel has no field for the onnx-model's session settings: unset, Vespa's own defaults.
    settings = {"intraop-threads": params["intraop_threads"], "gpu-device": params["gpu_device"]}
    lines = "".join(f"        {name}: {value}\n" for name, value in settings.items() if value is not None)
    schema_file = package_dir / "schemas/doc.sd"
    text = schema_file.read_text(encoding="utf-8")
    schema_file.write_text(text.replace("        output logits: logits\n", "        output logits: logits\n" + lines, 1),
                           encoding="utf-8")


def check_params(params, max_length):
    if params["model"] not in ("auto", *FILES.values()):
        raise StageError(f"vespa.model={params['model']}: expected auto or one of {', '.join(FILES.values())}")
    for name in ("rerank_count", "timed_hits", "eval_pairs", "rerun_hits"):
        if not isinstance(params[name], int) or params[name] < 1:
            raise StageError(f"vespa.{name}={params[name]}: expected a positive integer")
    # Vespa's onnx-model settings: null leaves Vespa's default; else the lowest value each takes.
    for name, (lowest, expected) in {"intraop_threads": (1, "a positive integer"),
                                     "gpu_device": (0, "a GPU number, 0 or more, as an integer")}.items():
        if params[name] is not None and (not isinstance(params[name], int) or params[name] < lowest):
            raise StageError(f"vespa.{name}={params[name]}: expected null (Vespa's default) or {expected}")
    if params["max_length"] != "auto" and not (isinstance(params["max_length"], int) and 3 <= params["max_length"] <= max_length):
        raise StageError(f"vespa.max_length={params['max_length']}: expected auto or an integer from 3 to "
                         f"encode.max_length={max_length}")
    if not (isinstance(params["length_coverage"], (int, float)) and 0 < params["length_coverage"] <= 1):
        raise StageError(f"vespa.length_coverage={params['length_coverage']}: expected a share above 0 and at most 1")
    if not (isinstance(params["max_ranking_drop"], (int, float)) and params["max_ranking_drop"] >= 0):
        raise StageError(f"vespa.max_ranking_drop={params['max_ranking_drop']}: expected a number, 0 or more")


def measure(paths, metadata, val_pairs, tokenizer, length, cls_sep, params):
    """Each candidate file's cost per hit and ranking metrics at L, one hit at a time on Vespa's
    inputs, and the largest change of its logits scored again (rerun_change); beside the float32
    scorer's metrics (what evaluate runs) on the same pairs."""
    from scorer import RelevanceScorer, relevance_probability
    from stages.metrics import metrics_by_scorer, query_ids
    from stages.vespa_hits import cost, hit_feeds, hit_session, rerun_change, score_hits, time_hits

    queries, titles = val_pairs["query"].tolist(), val_pairs["title"].tolist()
    feeds = hit_feeds(tokenizer, queries, titles, length, *cls_sep, metadata["inputs"])
    threads, output = params["intraop_threads"] or 1, metadata["output"]
    gflop = gflop_per_hit(paths["fp32"], length)  # the same products in every candidate
    sessions = {name: hit_session(path, threads) for name, path in paths.items()}
    milliseconds = time_hits(sessions, feeds, output, params["timed_hits"])
    costs, scores = {}, {}
    for name, path in paths.items():
        logits = score_hits(sessions[name], feeds, output)
        costs[name] = {"file": FILES[name], **cost(milliseconds[name], threads, params["rerank_count"]), "gflop_per_hit": gflop,
                       "rerun_logit_change": rerun_change(path, feeds[:params["rerun_hits"]], output, logits)}
        scores[name] = relevance_probability(logits, metadata)
    scores["evaluate_fp32"] = RelevanceScorer(paths["fp32"]).scores(queries, titles)
    ranking = metrics_by_scorer(query_ids(val_pairs["query"]), val_pairs["label"].to_numpy(), scores, "vespa")
    return {name: {**costs.get(name, {}), **ranking[name]} for name in scores}, threads


def refusals(files, max_drop):
    """{candidate: why it may not be chosen by auto}, [] for each that may: nDCG@10 or ROC-AUC more
    than `max_drop` below model.onnx's on Vespa's inputs, or logits that change when scored again."""
    reasons = {}
    for name in FILES:
        if name not in files:
            continue
        file, reference = files[name], files["fp32"]
        reasons[name] = [f"{metric} {_text(file[metric])} against model.onnx's {_text(reference[metric])}"
                         for metric in RANKING_CHECKS if reference[metric] is not None
                         and (file[metric] is None or reference[metric] - file[metric] > max_drop)]
        if file["rerun_logit_change"]:
            reasons[name].append(f"logits change by up to {file['rerun_logit_change']:.2g} when the hits are scored again")
    return reasons


def choose(files, reasons, model):
    """The candidate to ship: with vespa.model=auto, the fewest milliseconds per hit among those
    without a refusal; else the file vespa.model names (its unfused graph when no fusion matched)."""
    if model != "auto":
        name = next(name for name, file in FILES.items() if file == model)
        return UNFUSED.get(name, name) if name not in files else name
    allowed = [name for name in reasons if not reasons[name]]
    if not allowed:
        raise StageError("vespa.model=auto: no file ranks as model.onnx does and scores deterministically: "
                         + "; ".join(f"{FILES[name]}: {', '.join(why)}" for name, why in reasons.items()))
    return min(allowed, key=lambda name: files[name]["ms_per_hit"])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models_dir", type=Path, help="both ONNX files, tokenizer.json, metadata.json (models)")
    parser.add_argument("split_dir", type=Path, help="train.csv and val.csv: L from their lengths; val.csv ranked (data/split)")
    parser.add_argument("package_dir", type=Path, help="output: the application package (models/vespa)")
    parser.add_argument("metrics_path", type=Path, help="output: the served file's cost per hit and ranking "
                        "(results/vespa/metrics.json); report.json beside it holds every candidate's figures")
    args = parser.parse_args()
    params, max_length = load_params("vespa"), load_params("encode")["max_length"]
    check_params(params, max_length)

    import onnxruntime

    from stages.vespa_hits import covering_length, length_counts, vespa_tokenizer

    models_dir = args.models_dir
    metadata = json.loads((models_dir / "metadata.json").read_text(encoding="utf-8"))
    tokenizer = vespa_tokenizer(models_dir / "tokenizer.json")
    cls_sep, reason = separators(tokenizer, metadata["inputs"])
    with atomic_paths(args.package_dir, args.metrics_path, report_path(args.metrics_path)) as (
            package_dir, metrics_path, report_file):
        if reason:
            package_dir.mkdir()
            (package_dir / "NOT_SERVABLE.txt").write_text(f"Not servable in Vespa: {reason}.\n", encoding="utf-8")
            write_json(metrics_path, {"servable": False, "reason": reason})
            write_json(report_file, {"servable": False, "reason": reason})
            print(f"vespa: warning: no package for this model: {reason}")
            return
        counts = {split: length_counts(tokenizer, args.split_dir / f"{split}.csv", max_length) for split in ("train", "val")}
        both = counts["train"] + counts["val"]
        length = (covering_length(both, params["length_coverage"], max_length) if params["max_length"] == "auto"
                  else params["max_length"])
        held, val_cut = both[:length + 1].sum() / both.sum(), int(counts["val"][length + 1:].sum())
        val_pairs = sample_queries(args.split_dir / "val.csv", params["eval_pairs"], "vespa.eval_pairs")
        with tempfile.TemporaryDirectory(dir=package_dir.parent) as built:
            paths, fused_ops = build_candidates(models_dir, Path(built), load_params("quantize"))
            files, threads = measure(paths, metadata, val_pairs, tokenizer, length, cls_sep, params)
            reasons = refusals(files, params["max_ranking_drop"])
            served = choose(files, reasons, params["model"])
            write_package(models_dir, package_dir, paths[served], length, params, *cls_sep)
        for name in reasons:
            files[name]["passes_checks"] = not reasons[name]
        machine = cpu_description()
        report = {
            "servable": True, "max_length": length, "pairs_within_max_length": float(held), "val_pairs_cut": val_cut,
            **files, "served": files[served], "fused_ops": fused_ops or None, "rerank_count": params["rerank_count"],
            "pairs": len(val_pairs), "queries": int(val_pairs["query"].nunique()),
            "machine": {**machine, "intraop_threads": threads, "onnxruntime": onnxruntime.__version__}}
        write_json(report_file, report)
        write_json(metrics_path, headline(report, METRICS))

    features = "tokenInputIds" if cls_sep == (VESPA_CLS, VESPA_SEP) else "customTokenInputIds"
    rule = (f"the shortest multiple of 8 holding vespa.length_coverage={params['length_coverage']}"
            if params["max_length"] == "auto" else "vespa.max_length")
    chosen = ("the cheapest that ranks as model.onnx does and scores deterministically" if params["model"] == "auto"
              else "vespa.model")
    print(f"vespa: {args.package_dir}: BM25, then {FILES[served]} ({chosen}) on the top {params['rerank_count']} hits; "
          f"inputs built by {features} (CLS {cls_sep[0]}, SEP {cls_sep[1]}) at L = {length} tokens ({rule}), which holds "
          f"{held:.1%} of the training and validation pairs; Vespa cuts {val_cut} of {int(counts['val'].sum())} "
          f"validation pairs")
    if val_cut:
        print("vespa: a pair longer than L is cut at L, final SEP included, where the scorer shortens the longer text "
              "and keeps both SEPs, so those pairs score differently in Vespa than in evaluate")
    if fused_ops:
        print("vespa: onnxscript's fusions, stopped at MultiHeadAttention, wrote "
              + ", ".join(f"{count} {op}" for op, count in fused_ops.items()))
    else:
        print("vespa: no onnxscript fusion matched this model's graph: it is left as it is, and the fused files are "
              "not built")
    if params["model"] != "auto" and FILES[served] != params["model"]:
        print(f"vespa: {params['model']} is {FILES[served]} here, unfused")
    for name in reasons:
        file = files[name]
        verdict = "; ".join(reasons[name]) or "ranks as model.onnx does, deterministic"
        print(f"vespa: {file['file']}{' (served)' if name == served else ''}: {file['ms_per_hit']:.2f} ms per hit "
              f"(p99 {file['ms_per_hit_p99']:.2f}), {file['cpu_ms_per_query']:.0f} ms of CPU per query, nDCG@10 "
              f"{_text(file['ndcg@10'])}, ROC-AUC {_text(file['roc_auc'])} on Vespa's inputs; {verdict}")
    if reasons[served]:
        print(f"vespa: warning: vespa.model={params['model']} ships a file that {'; '.join(reasons[served])}")
    gflop = files["fp32"]["gflop_per_hit"]
    print(f"vespa: {'an unknown count of' if gflop is None else f'{gflop:.3g}'} GFLOP per hit; the scorer's float32 nDCG@10 on the same "
          f"{len(val_pairs)} pairs: {_text(files['evaluate_fp32']['ndcg@10'])}; timed at batch 1, {threads} intra-op "
          f"thread(s), on {machine['cpu']} ({machine['isa']})")
    print(f"vespa: L and the served file's cost and ranking in {args.metrics_path}; every file's figures, the counts and "
          f"the machine in {report_path(args.metrics_path)}")


def _text(value):
    return "undefined" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run(main)
