"""split: check the raw CSV and split its pairs into training and validation sets.

strategy `group` keeps each query's pairs on one side, so validation measures the model on
queries it never saw; `random` splits rows, as the reference recipe does (the same query then
lands on both sides and flatters the score). With `folds` set, the validation set is fold
`fold` of a k-fold cross-validation instead of a `val_size` holdout.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run

STRATEGIES = ("group", "random")


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


def drop_duplicates(pairs, path):
    """Drop repeated (query, title) pairs; the same pair with two labels is an error naming both rows."""
    labels_per_pair = pairs.groupby(["query", "title"])["label"].nunique()
    conflicting = labels_per_pair[labels_per_pair > 1]
    if len(conflicting):
        query, title = conflicting.index[0]
        rows = pairs.index[(pairs["query"] == query) & (pairs["title"] == title)] + 2  # 1-based, after the header
        raise StageError(f"{path}: rows {rows[0]} and {rows[-1]} label the same pair ({query!r}, {title!r}) "
                         f"differently; fix one of them")
    unique = pairs.drop_duplicates(subset=["query", "title"])
    if len(unique) < len(pairs):
        print(f"split: dropped {len(pairs) - len(unique)} duplicate (query, title) pair(s) from {path}")
    return unique


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
    args = parser.parse_args()
    params = load_params("split")

    pairs = drop_duplicates(read_pairs(args.raw_csv), args.raw_csv)
    check_both_classes(pairs, args.raw_csv)
    train_pairs, val_pairs = split_pairs(pairs, params)
    check_both_classes(train_pairs, f"the training set split from {args.raw_csv} (split.seed={params['seed']})")
    with atomic_path(args.split_dir) as split_dir:
        split_dir.mkdir()
        train_pairs.to_csv(split_dir / "train.csv", index=False)
        val_pairs.to_csv(split_dir / "val.csv", index=False)
    print(f"split: {len(train_pairs)} training pairs ({train_pairs['query'].nunique()} queries), "
          f"{len(val_pairs)} validation pairs ({val_pairs['query'].nunique()} queries)")


if __name__ == "__main__":
    run(main)
