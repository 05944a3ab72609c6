"""split: check the raw CSV and split its pairs into training and validation sets.

strategy `group` keeps each query's pairs on one side, so validation measures the model on
queries it never saw; `random` splits pairs, as the reference recipe does (the same query then
lands on both sides and flatters the score). With `folds` set, the validation set is fold
`fold` of a k-fold cross-validation instead of a `val_size` holdout.

Out of core: the CSV is checked as it streams into a DuckDB database on disk, which merges
repeated pairs, orders the queries (or pairs) by a seeded hash and writes both sides, spilling to
disk beyond a fixed memory limit. Memory does not grow with the rows.
"""
import argparse
import math
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, report_path, run, write_metrics

STRATEGIES = ("group", "random")
CONFLICT_POLICIES = ("relevant", "drop", "error")
# DuckDB spills to its temporary folder past memory_limit. One thread: with two, each needs its own
# buffers, and ordering 400k rows within 64 MB failed; with one, the stage took 39 MiB more at 400k
# rows than at 40k. Neither setting changes a result.
DUCKDB = {"memory_limit": "64MB", "threads": 1, "preserve_insertion_order": False}
# results/split/metrics.json: the split's sizes; report.json beside it adds rows, merged and conflicting pairs.
METRICS = ("train_pairs", "val_pairs", "train_queries", "val_queries")


def check_params(params):
    strategy, folds, fold, val_size = params["strategy"], params["folds"], params["fold"], params["val_size"]
    if strategy not in STRATEGIES:
        raise StageError(f"split.strategy={strategy}: expected one of {', '.join(STRATEGIES)}")
    if params["conflicting_labels"] not in CONFLICT_POLICIES:
        raise StageError(f"split.conflicting_labels={params['conflicting_labels']}: expected one of "
                         f"{', '.join(CONFLICT_POLICIES)}")
    if folds is None:
        if not 0 < val_size < 1:
            raise StageError(f"split.val_size={val_size}: expected a fraction between 0 and 1")
        return
    if not isinstance(folds, int) or folds < 2:
        raise StageError(f"split.folds={folds}: expected null (one holdout split) or an integer of at least 2")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise StageError(f"split.fold={fold}: expected an integer from 0 to {folds - 1} (split.folds={folds})")


def load_rows(db, path):
    """Stream the checked rows of the CSV into table `raw` (row number, query, title, label)."""
    db.execute("CREATE TABLE raw (row BIGINT, query VARCHAR, title VARCHAR, label TINYINT)")
    for chunk in read_pairs(path):
        chunk = chunk.rename_axis("row").reset_index()  # noqa: F841 (read by DuckDB by its name)
        db.execute("INSERT INTO raw SELECT row, query, title, label FROM chunk")


def resolve_duplicates(db, path, policy):
    """Table `pairs`: one row per (query, title) pair, in the order of its first row, and the counts of
    rows repeating a pair and of pairs labelled both ways.

    The same pair with both labels is common in judgments joined on titles (preprint and published
    versions of a paper, generic titles). split.conflicting_labels says what to do: `relevant`
    keeps the pair as relevant (some judge found a document of that title relevant), `drop` leaves
    it out, `error` stops naming its first and last rows.
    """
    db.execute("""CREATE TABLE grouped AS
                  SELECT query, title, max(label) AS label, min(label) < max(label) AS conflicting,
                         count(*) AS copies, min(row) AS first_row, max(row) AS last_row
                  FROM raw GROUP BY query, title""")
    rows, n_conflicting, conflicting_rows = db.execute(
        "SELECT sum(copies), count(*) FILTER (conflicting), coalesce(sum(copies) FILTER (conflicting), 0) FROM grouped").fetchone()
    if n_conflicting and policy == "error":
        query, title, first, last = db.execute("SELECT query, title, first_row, last_row FROM grouped WHERE conflicting "
                                               "ORDER BY first_row LIMIT 1").fetchone()
        raise StageError(f"{path}: rows {first} and {last} label the same pair ({query!r}, {title!r}) "
                         f"differently; fix one of them, or set split.conflicting_labels to relevant or drop")
    keep = "NOT conflicting" if policy == "drop" else "true"
    db.execute(f"CREATE TABLE pairs AS SELECT query, title, label, first_row FROM grouped WHERE {keep}")
    (n_pairs,) = db.execute("SELECT count(*) FROM pairs").fetchone()
    repeated = (rows - conflicting_rows if policy == "drop" else rows) - n_pairs
    if repeated or n_conflicting:
        resolution = "kept as relevant" if policy == "relevant" else "dropped"
        print(f"split: {path}: {repeated} row(s) repeating a pair merged; {n_conflicting} pair(s) labelled both "
              f"0 and 1 {resolution} (split.conflicting_labels={policy})")
    return {"rows": int(rows), "repeated_rows": int(repeated), "conflicting_pairs": int(n_conflicting),
            "conflicting_labels": policy, "pairs": int(n_pairs)}


def check_both_classes(db, table, where):
    present = [label for (label,) in db.execute(f"SELECT DISTINCT label FROM {table}").fetchall()]
    if len(present) == 1:
        raise StageError(f"{where}: every pair has label {present[0]}; a classifier needs relevant (1) and irrelevant (0) pairs")


def assign_sides(db, params):
    """Table `sides`: each unit (a query for `group`, a pair for `random`) with `val` true on the
    validation side. Units are ranked by the MD5 of the seed and the unit; the first
    ceil(val_size x units) (group) or round(val_size x units) (random) are validation, or with
    folds, rank x folds // units is a unit's fold: the same for the same data and seed, on any machine."""
    strategy, folds, val_size = params["strategy"], params["folds"], params["val_size"]
    unit = "query" if strategy == "group" else "query, title"
    key = "query" if strategy == "group" else "query || chr(31) || title"
    db.execute(f"""CREATE TABLE ranked AS
                   SELECT {unit}, row_number() OVER (ORDER BY md5($seed || ':' || {key}), {unit}) - 1 AS rank
                   FROM (SELECT DISTINCT {unit} FROM pairs)""", {"seed": str(params["seed"])})
    (units,) = db.execute("SELECT count(*) FROM ranked").fetchone()
    what = "distinct queries" if strategy == "group" else "pairs"
    if folds is None:
        if strategy == "group" and units < 2:
            raise StageError(f"split.strategy=group: needs at least 2 distinct queries, the data has {units}")
        n_val = math.ceil(units * val_size) if strategy == "group" else round(units * val_size)
        if n_val < 1 or n_val >= units:
            raise StageError(f"split.val_size={val_size}: {units} {what} cannot give a non-empty training and "
                             f"validation set")
        validation = f"rank < {n_val}"
    else:
        if folds > units:
            raise StageError(f"split.folds={folds}: the data has only {units} {what} to spread over the folds")
        validation = f"rank * {folds} // {units} = {params['fold']}"
    db.execute(f"CREATE TABLE sides AS SELECT {unit}, {validation} AS val FROM ranked")
    return unit


def write_sides(db, unit, split_dir):
    """train.csv and val.csv, each in the order of the pairs' first rows in the raw CSV; their counts."""
    counts = {}
    for side, val in (("train", "NOT val"), ("val", "val")):
        db.execute(f"CREATE TABLE {side} AS SELECT query, title, label, first_row FROM pairs JOIN sides USING ({unit}) "
                   f"WHERE {val}")
        db.execute(f"COPY (SELECT query, title, label FROM {side} ORDER BY first_row) TO '{sql_path(split_dir / f'{side}.csv')}' "
                   f"(HEADER, DELIMITER ',')")
        pairs, queries = db.execute(f"SELECT count(*), count(DISTINCT query) FROM {side}").fetchone()
        counts |= {f"{side}_pairs": int(pairs), f"{side}_queries": int(queries)}
    return counts


def sql_path(path):
    return str(path).replace("'", "''")


def split_csv(raw_csv, split_dir, params, scratch):
    """Check `raw_csv`, write train.csv and val.csv into `split_dir`; the counts for the report.
    DuckDB's database and spill files live in `scratch`."""
    import duckdb

    check_params(params)
    db = duckdb.connect(str(scratch / "split.duckdb"), config={**DUCKDB, "temp_directory": str(scratch / "spill")})
    try:
        load_rows(db, raw_csv)
        counts = resolve_duplicates(db, raw_csv, params["conflicting_labels"])
        check_both_classes(db, "pairs", raw_csv)
        unit = assign_sides(db, params)
        counts |= write_sides(db, unit, split_dir)
        check_both_classes(db, "train", f"the training set split from {raw_csv} (split.seed={params['seed']})")
    finally:
        db.close()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_csv", type=Path, help="query,title,label CSV (data/raw/pairs.csv)")
    parser.add_argument("split_dir", type=Path, help="output folder for train.csv and val.csv (data/split)")
    parser.add_argument("metrics", type=Path, help="output: the split's sizes (results/split/metrics.json); report.json "
                        "beside it adds the counts of rows, merged and conflicting pairs")
    args = parser.parse_args()
    params = load_params("split")

    with atomic_path(args.split_dir) as split_dir:
        split_dir.mkdir()
        scratch = split_dir.parent / "work"
        scratch.mkdir()
        counts = split_csv(args.raw_csv, split_dir, params, scratch)
    write_metrics(args.metrics, counts, METRICS)
    print(f"split: {counts['train_pairs']} training pairs ({counts['train_queries']} queries), "
          f"{counts['val_pairs']} validation pairs ({counts['val_queries']} queries) in {args.metrics}; rows, "
          f"merged and conflicting pairs in {report_path(args.metrics)}")


if __name__ == "__main__":
    run(main)
