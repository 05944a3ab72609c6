"""Score (query, title) pairs with the exported model, with onnxruntime and the tokenizers
library only: no torch, no transformers. What a search service needs to load the model.

    python -m stages.scorer pairs PAIRS.csv SCORED.csv   # adds a `relevance` column, streaming
    python -m stages.scorer rank "covid masks" TITLES.txt --top-k 10

or from Python:

    scorer = RelevanceScorer("models/model.onnx")  # reads tokenizer.json and metadata.json beside it
    scorer.scores(["covid masks"], ["Face masks in schools"])  # -> P(relevant) per pair
"""
import argparse
import csv
import heapq
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")  # the exported graph's inputs, in order
BATCHES_PER_CHUNK = 16  # the command line reads this many batches at a time, to sort them by length


class RelevanceScorer:
    def __init__(self, onnx_path):
        import onnxruntime
        from tokenizers import Tokenizer

        model_dir = Path(onnx_path).parent
        self.metadata = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        # The same truncation as the encode stage (transformers' truncation=True: longest first).
        self.tokenizer.enable_truncation(self.metadata["max_length"], strategy="longest_first")
        self.tokenizer.enable_padding(pad_id=self.metadata["pad_token_id"], pad_token=self.metadata["pad_token"])
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.relevant = self.metadata["labels"].index("relevant")

    def encode(self, queries, titles):
        encodings = self.tokenizer.encode_batch(list(zip(queries, titles)))
        columns = ([e.ids for e in encodings], [e.type_ids for e in encodings], [e.attention_mask for e in encodings])
        return {name: np.array(column, dtype=np.int64) for name, column in zip(INPUT_NAMES, columns)}

    def logits(self, queries, titles):
        return self.session.run(["logits"], self.encode(queries, titles))[0]

    def scores(self, queries, titles, batch_size=64):
        """Probability that each title is relevant to its query, in input order. Pairs are scored
        `batch_size` at a time from shortest to longest (characters standing in for tokens), so
        each batch is padded to about its own pairs' length: 1.3x the pairs/s of input order."""
        by_length = np.argsort([len(query) + len(title) for query, title in zip(queries, titles)], kind="stable")
        logits = np.zeros((len(by_length), len(self.metadata["labels"])))
        for start in range(0, len(by_length), batch_size):
            rows = by_length[start:start + batch_size]
            logits[rows] = self.logits([queries[i] for i in rows], [titles[i] for i in rows])
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted[:, self.relevant] / shifted.sum(axis=1)


def batched(rows, size):
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def score_csv(scorer, input_path, output_path, batch_size):
    """Stream INPUT (query,title[,...]) to OUTPUT with a `relevance` column; memory does not grow with the file."""
    from tqdm import tqdm

    with open(input_path, newline="", encoding="utf-8-sig") as source:
        reader = csv.DictReader(source)
        if reader.fieldnames is None:
            sys.exit(f"error: {input_path}: file is empty; expected a header with query,title")
        missing = [column for column in ("query", "title") if column not in reader.fieldnames]
        if missing:
            sys.exit(f"error: {input_path}: missing column(s) {', '.join(missing)}; expected query,title")
        fd, scratch = tempfile.mkstemp(prefix=f".{Path(output_path).name}.", dir=Path(output_path).parent)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as sink:
                writer = csv.DictWriter(sink, fieldnames=[*reader.fieldnames, "relevance"])
                writer.writeheader()
                scored = 0
                with tqdm(unit=" pairs", desc="Scoring") as progress:
                    for chunk in batched(reader, batch_size * BATCHES_PER_CHUNK):
                        scores = scorer.scores([r["query"] for r in chunk], [r["title"] for r in chunk], batch_size)
                        for row, score in zip(chunk, scores):
                            writer.writerow({**row, "relevance": f"{score:.6f}"})
                        scored += len(chunk)
                        progress.update(len(chunk))
            if scored == 0:
                sys.exit(f"error: {input_path}: no rows after the header")
            os.replace(scratch, output_path)
        finally:
            if os.path.exists(scratch):
                os.unlink(scratch)
    return scored


def top_titles(scorer, query, titles_path, top_k, batch_size):
    """The top_k (score, title) pairs for one query over a file of titles, one per line, streamed."""
    with open(titles_path, encoding="utf-8-sig") as source:
        titles = (line.strip() for line in source)
        best = []
        for chunk in batched((title for title in titles if title), batch_size * BATCHES_PER_CHUNK):
            scores = scorer.scores([query] * len(chunk), chunk, batch_size)
            best = heapq.nlargest(top_k, [*best, *zip(scores.tolist(), chunk)], key=lambda pair: pair[0])
    if not best:
        sys.exit(f"error: {titles_path}: no titles; expected one title per line")
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/model.onnx", help="model.onnx or model.int8.onnx (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    commands = parser.add_subparsers(dest="command", required=True)
    pairs = commands.add_parser("pairs", help="score a CSV of query,title pairs")
    pairs.add_argument("input_csv")
    pairs.add_argument("output_csv")
    rank = commands.add_parser("rank", help="rank a file of titles (one per line) for a query")
    rank.add_argument("query")
    rank.add_argument("titles_file")
    rank.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()

    for path in (args.model, getattr(args, "input_csv", None), getattr(args, "titles_file", None)):
        if path and not Path(path).is_file():
            sys.exit(f"error: {path}: no such file")
    scorer = RelevanceScorer(args.model)
    if args.command == "pairs":
        scored = score_csv(scorer, args.input_csv, args.output_csv, args.batch_size)
        print(f"scored {scored} pairs into {args.output_csv}", file=sys.stderr)
    else:
        for position, (score, title) in enumerate(top_titles(scorer, args.query, args.titles_file, args.top_k, args.batch_size), 1):
            print(f"{position}\t{score:.4f}\t{title}")


if __name__ == "__main__":
    main()
