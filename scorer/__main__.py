"""Score (query, title) pairs with the exported model from the command line (onnxruntime and
tokenizers only, like the RelevanceScorer it runs):

    python -m scorer pairs PAIRS.csv SCORED.csv   # adds a `relevance` column, streaming; - for stdin/stdout
    python -m scorer rank "covid masks" TITLES.txt --top-k 10
    python -m scorer --model models/model.int8.onnx rank ...
"""
import argparse
import contextlib
import csv
import heapq
import io
import itertools
import os
import sys
import tempfile
from pathlib import Path

from scorer import RelevanceScorer

BATCHES_PER_CHUNK = 16  # the command line reads this many batches at a time, to sort them by length
STDIO = "-"  # as an input path, standard input; as the output path, standard output


def batched(rows, size):
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def shown(path):
    return "standard input" if path == STDIO else path


@contextlib.contextmanager
def text_input(path):
    """The file at `path` as UTF-8 text (a byte-order mark skipped), or standard input for `-`."""
    if path != STDIO:
        with open(path, newline="", encoding="utf-8-sig") as source:
            yield source
        return
    source = io.TextIOWrapper(sys.stdin.buffer, newline="", encoding="utf-8-sig")
    try:
        yield source
    finally:
        source.detach()  # leave sys.stdin open


@contextlib.contextmanager
def text_output(path):
    """Standard output for `-`; else a scratch file beside `path`, renamed to it once everything is
    written, so a failure leaves no half-written file and an older one in place."""
    if path == STDIO:
        yield sys.stdout
        sys.stdout.flush()
        return
    fd, scratch = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as sink:
            yield sink
        umask = os.umask(0)  # mkstemp made the file owner-only; give it the mode any new file of the user's gets
        os.umask(umask)
        os.chmod(scratch, 0o666 & ~umask)
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def score_csv(scorer, input_path, output_path, batch_size):
    """Stream INPUT (query,title[,...]) to OUTPUT with a `relevance` column; memory does not grow with the file."""
    from tqdm import tqdm

    with text_input(input_path) as source:
        reader = csv.DictReader(source)
        if reader.fieldnames is None:
            sys.exit(f"error: {shown(input_path)}: file is empty; expected a header with query,title")
        missing = [column for column in ("query", "title") if column not in reader.fieldnames]
        if missing:
            sys.exit(f"error: {shown(input_path)}: missing column(s) {', '.join(missing)}; expected query,title")
        chunks = batched(reader, batch_size * BATCHES_PER_CHUNK)
        first = next(chunks, None)
        if first is None:
            sys.exit(f"error: {shown(input_path)}: no rows after the header")
        with text_output(output_path) as sink:
            writer = csv.DictWriter(sink, fieldnames=[*reader.fieldnames, "relevance"])
            writer.writeheader()
            scored = 0
            with tqdm(unit=" pairs", desc="Scoring") as progress:
                for chunk in itertools.chain([first], chunks):
                    scores = scorer.scores([r["query"] for r in chunk], [r["title"] for r in chunk], batch_size)
                    for row, score in zip(chunk, scores):
                        writer.writerow({**row, "relevance": f"{score:.6f}"})
                    scored += len(chunk)
                    progress.update(len(chunk))
    return scored


def top_titles(scorer, query, titles_path, top_k, batch_size):
    """The top_k (score, title) pairs for one query over a file of titles, one per line, streamed."""
    with text_input(titles_path) as source:
        titles = (line.strip() for line in source)
        best = []
        for chunk in batched((title for title in titles if title), batch_size * BATCHES_PER_CHUNK):
            scores = scorer.scores([query] * len(chunk), chunk, batch_size)
            best = heapq.nlargest(top_k, [*best, *zip(scores.tolist(), chunk)], key=lambda pair: pair[0])
    if not best:
        sys.exit(f"error: {shown(titles_path)}: no titles; expected one title per line")
    return best


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, 1 or more")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m scorer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/model.onnx",
                        help="model.onnx or model.int8.onnx, with the metadata.json and tokenizer.json the export "
                             "stage writes beside it (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help=f"pairs per onnxruntime call; the input is read {BATCHES_PER_CHUNK} batches at a time "
                             "and sorted by length, so each batch pads little (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="pairs or rank; `python -m scorer COMMAND --help` tells its arguments")
    pairs = commands.add_parser("pairs", help="score a CSV of query,title pairs",
                                description="Copy a CSV of query,title pairs (and any other columns) with a "
                                            "`relevance` column added: P(relevant), in the input's order.")
    pairs.add_argument("input_csv", help="CSV with a header and query,title columns; - reads standard input")
    pairs.add_argument("output_csv", help="where the scored CSV goes, written whole or not at all; "
                                          "- writes standard output")
    rank = commands.add_parser("rank", help="rank a file of titles (one per line) for a query",
                               description="Print the top titles for a query, best first: position, "
                                           "P(relevant) and title, tab-separated.")
    rank.add_argument("query", help="the search query")
    rank.add_argument("titles_file", help="one title per line (blank lines skipped); - reads standard input")
    rank.add_argument("--top-k", type=positive_int, default=10, metavar="K",
                      help="how many titles to print (default: %(default)s)")
    return parser


def main():
    args = build_parser().parse_args()
    for path in (getattr(args, "input_csv", None), getattr(args, "titles_file", None)):
        if path and path != STDIO and not Path(path).is_file():
            sys.exit(f"error: {path}: no such file")
    output = getattr(args, "output_csv", STDIO)
    if output != STDIO and not Path(output).parent.is_dir():
        sys.exit(f"error: {output}: no folder {Path(output).parent} to write it in")
    try:
        scorer = RelevanceScorer(args.model)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    try:
        if args.command == "pairs":
            scored = score_csv(scorer, args.input_csv, output, args.batch_size)
            print(f"scored {scored} pairs into {'standard output' if output == STDIO else output}", file=sys.stderr)
        else:
            for position, (score, title) in enumerate(
                    top_titles(scorer, args.query, args.titles_file, args.top_k, args.batch_size), 1):
                print(f"{position}\t{score:.4f}\t{title}")
            sys.stdout.flush()
    except BrokenPipeError:  # the reader of standard output stopped early (| head): as Unix tools, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush raises nothing
        sys.exit(1)


if __name__ == "__main__":
    main()
