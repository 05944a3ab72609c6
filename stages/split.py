"""split: check the raw CSV and split its pairs into training and validation sets.

strategy `group` keeps each query's pairs on one side, so validation measures the model on
queries it never saw; `random` splits rows, as the reference recipe does (the same query then
lands on both sides and flatters the score). With `folds` set, the validation set is fold
`fold` of a k-fold cross-validation instead of a `val_size` holdout.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run, write_json

STRATEGIES = ("group", "random")
CONFLICT_POLICIES = ("relevant", "drop", "error")


def check_params(params, n_queries):
    strategy, folds, fold, val_size = params["strategy"], params["folds"], params["fold"], params["val_size"]
    if strategy not in STRATEGIES:
        raise StageError(f"split.strategy={strategy}: expected one of {', '.join(STRATEGIES)}")
    if folds is None:
        if not 0 < val_size < 1:
            raise StageError(f"split.val_size={val_size}: expected a fraction between 0 and 1")
        if strategy == "group" and n_queries < 2:
            raise StageError(f"split.strategy=group: needs at least 2 distinct queries, the data has {n_queries}")
        return
    if not isinstance(folds, int) or folds < 2:
        raise StageError(f"split.folds={folds}: expected null (one holdout split) or an integer of at least 2")
    if strategy == "group" and folds > n_queries:
        raise StageError(f"split.folds={folds}: the data has only {n_queries} distinct queries to spread over the folds")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise StageError(f"split.fold={fold}: expected an integer from 0 to {folds - 1} (split.folds={folds})")


def resolve_duplicates(pairs, path, policy):
    """One row per (query, title) pair, and how many pairs were repeated or labelled both ways.

    The same pair with both labels is common in judgments joined on titles (preprint and published
    versions of a paper, generic titles). split.conflicting_labels says what to do: `relevant`
    keeps the pair as relevant (some judge found a document of that title relevant), `drop` leaves
    it out, `error` stops naming both rows.
    """
    if policy not in CONFLICT_POLICIES:
        raise StageError(f"split.conflicting_labels={policy}: expected one of {', '.join(CONFLICT_POLICIES)}")
    labels_per_pair = pairs.groupby(["query", "title"])["label"].transform("nunique")
    conflicting = pairs[labels_per_pair > 1]
    if len(conflicting) and policy == "error":
        query, title = conflicting.iloc[0][["query", "title"]]
        rows = pairs.index[(pairs["query"] == query) & (pairs["title"] == title)] + 2  # 1-based, after the header
        raise StageError(f"{path}: rows {rows[0]} and {rows[-1]} label the same pair ({query!r}, {title!r}) "
                         f"differently; fix one of them, or set split.conflicting_labels to relevant or drop")
    n_conflicting = len(conflicting.drop_duplicates(["query", "title"]))
    rows = len(pairs)
    if policy == "drop":
        pairs = pairs[labels_per_pair == 1]
    # Highest label first, so a conflicting pair keeps label 1; then the first row of each pair.
    unique = pairs.sort_values("label", ascending=False, kind="stable").drop_duplicates(["query", "title"]).sort_index()
    repeated = len(pairs) - len(unique)
    if repeated or n_conflicting:
        resolution = "kept as relevant" if policy == "relevant" else "dropped"
        print(f"split: {path}: {repeated} row(s) repeating a pair merged; {n_conflicting} pair(s) labelled both "
              f"0 and 1 {resolution} (split.conflicting_labels={policy})")
    return unique, {"rows": rows, "repeated_rows": repeated, "conflicting_pairs": n_conflicting,
                    "conflicting_labels": policy, "pairs": len(unique)}


def check_both_classes(pairs, where):
    present = set(pairs["label"])
    if present != {0, 1}:
        (only,) = present
        raise StageError(f"{where}: every pair has label {only}; a classifier needs relevant (1) and irrelevant (0) pairs")


def split_pairs(pairs, params):
    """Return (train_pairs, val_pairs), the same for the same pairs and params."""
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, train_test_split

    check_params(params, pairs["query"].nunique())
    strategy, folds, seed, val_size = params["strategy"], params["folds"], params["seed"], params["val_size"]
    if folds is None and strategy == "random":
        n_val = round(len(pairs) * val_size)
        if n_val < 1 or n_val >= len(pairs):
            raise StageError(f"split.val_size={val_size}: {len(pairs)} rows cannot give a non-empty training and validation set")
        return train_test_split(pairs, test_size=n_val, random_state=seed)
    if folds is None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_size, random_state=seed)
    elif strategy == "group":
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = splitter.split(pairs, groups=pairs["query"] if strategy == "group" else None)
    train_rows, val_rows = next(s for i, s in enumerate(splits) if i == (params["fold"] if folds else 0))
    return pairs.iloc[train_rows], pairs.iloc[val_rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_csv", type=Path, help="query,title,label CSV (data/raw/pairs.csv)")
    parser.add_argument("split_dir", type=Path, help="output folder for train.csv and val.csv (data/split)")
    parser.add_argument("report", type=Path, help="output: counts of rows, pairs and conflicts (results/split/metrics.json)")
    args = parser.parse_args()
    params = load_params("split")

    pairs, counts = resolve_duplicates(read_pairs(args.raw_csv), args.raw_csv, params["conflicting_labels"])
    check_both_classes(pairs, args.raw_csv)
    train_pairs, val_pairs = split_pairs(pairs, params)
    check_both_classes(train_pairs, f"the training set split from {args.raw_csv} (split.seed={params['seed']})")
    with atomic_path(args.split_dir) as split_dir:
        split_dir.mkdir()
        train_pairs.to_csv(split_dir / "train.csv", index=False)
        val_pairs.to_csv(split_dir / "val.csv", index=False)
    write_json(args.report, {**counts, "train_pairs": len(train_pairs), "val_pairs": len(val_pairs),
                             "train_queries": train_pairs["query"].nunique(), "val_queries": val_pairs["query"].nunique()})
    print(f"split: {len(train_pairs)} training pairs ({train_pairs['query'].nunique()} queries), "
          f"{len(val_pairs)} validation pairs ({val_pairs['query'].nunique()} queries)")


if __name__ == "__main__":
    run(main)
