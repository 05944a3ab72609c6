"""Score (query, title) pairs with the exported model from the command line (onnxruntime and
tokenizers only, like the RelevanceScorer it runs):

    python -m scorer pairs PAIRS.csv SCORED.csv   # adds a `relevance` column, streaming
    python -m scorer rank "covid masks" TITLES.txt --top-k 10
    python -m scorer --model models/model.int8.onnx rank ...
"""
import argparse
import csv
import heapq
import itertools
import os
import sys
import tempfile
from pathlib import Path

from scorer import RelevanceScorer

BATCHES_PER_CHUNK = 16  # the command line reads this many batches at a time, to sort them by length


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
            umask = os.umask(0)  # mkstemp made the file owner-only; give it the mode any new file of the user's gets
            os.umask(umask)
            os.chmod(scratch, 0o666 & ~umask)
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
