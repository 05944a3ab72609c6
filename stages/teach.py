"""teach: score every training and validation pair with a teacher cross-encoder (teacher.name), for
train's distillation losses.

data/teacher/{train,val}.npy: one float32 per row of data/split/{train,val}.csv, in the CSV's order
(encode keeps it: row i of data/encoded/{split} is the same pair). A pair's score is the teacher's
relevance logit (a 1-logit head, as MS MARCO cross-encoders have) or the difference of its two logits,
relevant minus irrelevant (a 2-label head, as this pipeline's models have). The teacher keeps its own
tokenizer; a pair longer than the teacher takes is cut as encode cuts (the longer of query and title
first), and counted in results/teach/metrics.json (report.json beside it: the pairs and the length). The pairs stream from the CSV a chunk at a time and
their scores into a memory-mapped file: memory is flat in the rows.

With teacher.name: null, data/teacher/ is empty, and the stage imports neither torch nor transformers:
a pipeline without a teacher pays a fraction of a second.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, report_path, run, write_metrics

SPLITS = ("train", "val")
METRICS = ("train.truncated", "val.truncated")  # results/teach/metrics.json; report.json adds the pairs and max_length
BATCH_SIZE = 64  # pairs per forward pass; a chunk of read_pairs is sorted by length first, so batches pad little


def load_teacher(model_dir, name, device):
    """The teacher (eval mode, on `device`), its tokenizer, and the most tokens it takes. Refused in one
    line naming teacher.name: a head of another size than 1 or 2 logits, or one its weights lack (an
    encoder without a trained head would score with random weights)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from stages.encode import position_offset

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    if config.num_labels not in (1, 2):
        raise StageError(f"teacher.name={name}: its head gives {config.num_labels} logits, no relevance score; "
                         f"expected a cross-encoder's 1 relevance logit or 2 labels (irrelevant, relevant)")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report: what it lacks is refused below
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise StageError(f"teacher.name={name}: cannot load it ({str(err).strip().splitlines()[0]})") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    if loading["missing_keys"]:
        missing = sorted({key.rsplit(".", 1)[0] for key in loading["missing_keys"]})
        raise StageError(f"teacher.name={name}: its weights have no {', '.join(missing)}, so it gives no relevance "
                         f"score; a teacher is a fine-tuned cross-encoder with its classification head")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    longest = getattr(config, "max_position_embeddings", None)
    longest = longest - position_offset(config) if longest else tokenizer.model_max_length
    return model.to(device).eval(), tokenizer, min(longest, tokenizer.model_max_length)


def tokenize(tokenizer, queries, titles, max_length):
    """The pairs tokenized and cut to max_length as encode cuts them, and how many were cut: each pair
    is tokenized to at most max_length + 1 tokens (so a long title never makes a long list), and those
    that reach it tokenized again to max_length."""
    encoded = tokenizer(queries, titles, truncation=True, max_length=max_length + 1)
    cut = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_length]
    if cut:
        again = tokenizer([queries[i] for i in cut], [titles[i] for i in cut], truncation=True, max_length=max_length)
        for name in encoded:
            for j, i in enumerate(cut):
                encoded[name][i] = again[name][j]
    return encoded, len(cut)


def score_split(csv_path, scores_path, model, tokenizer, max_length, device, batch_size=BATCH_SIZE):
    """Score every pair of a split CSV into a float32 .npy of one score per row, in the CSV's order,
    written as the chunks stream; returns the rows and how many were cut to max_length."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from stages.common import model_inputs, read_pairs
    from stages.ranking import relevance_scores

    rows = sum(len(chunk) for chunk in read_pairs(csv_path))  # the .npy's length, written before its scores
    scores = np.lib.format.open_memmap(scores_path, mode="w+", dtype=np.float32, shape=(rows,))
    names, done, truncated = model_inputs(model, tokenizer), 0, 0
    with tqdm(total=rows, unit="pair", desc=f"Scoring {csv_path.name}") as progress:
        for chunk in read_pairs(csv_path):
            encoded, cut = tokenize(tokenizer, chunk["query"].tolist(), chunk["title"].tolist(), max_length)
            truncated += cut
            order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
            chunk_scores = np.empty(len(chunk), dtype=np.float32)
            for start in range(0, len(order), batch_size):
                picked = order[start:start + batch_size]
                batch = tokenizer.pad({name: [encoded[name][i] for i in picked] for name in names}, return_tensors="pt")
                with torch.inference_mode():
                    logits = model(**{name: tensor.to(device) for name, tensor in batch.items()}).logits
                chunk_scores[picked] = relevance_scores(logits.float()).cpu().numpy()
                progress.update(len(picked))
            scores[done:done + len(chunk)] = chunk_scores
            done += len(chunk)
    scores.flush()
    del scores
    return rows, truncated


def teach(name, revision, split_dir, teacher_dir):
    """Fetch the teacher as download fetches model.name, into a scratch folder beside teacher_dir, and
    score both splits into teacher_dir; returns the stage's metrics."""
    import torch

    from stages.download import fetch_model

    model_dir = teacher_dir.parent / "teacher-model"  # in atomic_paths' scratch folder: removed with it
    fetch_model(name, revision or "main", model_dir, section="teacher")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, max_length = load_teacher(model_dir, name, device)
    print(f"teach: scoring with {name} on {device}, pairs cut to {max_length} tokens")
    metrics = {"max_length": max_length}
    for split in SPLITS:
        rows, truncated = score_split(split_dir / f"{split}.csv", teacher_dir / f"{split}.npy", model, tokenizer,
                                      max_length, device)
        metrics[split] = {"pairs": rows, "truncated": truncated}
        print(f"teach: {split}: {rows} pairs scored, {truncated} cut to {max_length} tokens")
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="folder with train.csv and val.csv (data/split)")
    parser.add_argument("teacher_dir", type=Path, help="output: train.npy and val.npy, one teacher score per row "
                        "of the split CSVs; empty without a teacher (data/teacher)")
    parser.add_argument("metrics_path", type=Path, help="output: the pairs cut to the teacher's length, per split "
                        "(results/teach/metrics.json); report.json beside it adds the pairs scored and the length")
    args = parser.parse_args()
    params = load_params("teacher")
    with atomic_path(args.teacher_dir) as teacher_dir:
        teacher_dir.mkdir()
        record = {} if params["name"] is None else teach(str(params["name"]), params["revision"], args.split_dir,
                                                          teacher_dir)
    write_metrics(args.metrics_path, record, METRICS)
    if params["name"] is None:
        print(f"teach: no teacher (teacher.name: null); {args.teacher_dir} is empty")
    else:
        print(f"teach: scores in {args.teacher_dir}; pairs cut in {args.metrics_path}, the rest in "
              f"{report_path(args.metrics_path)}")


if __name__ == "__main__":
    run(main)
