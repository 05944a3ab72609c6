"""split: check the raw CSV and split its pairs into training and validation sets."""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run


def split_pairs(pairs, val_size, seed):
    """Row-wise random split, as in the reference recipe."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_size < 1:
        raise StageError(f"split.val_size={val_size}: expected a fraction between 0 and 1")
    n_val = round(len(pairs) * val_size)
    if n_val < 1 or n_val >= len(pairs):
        raise StageError(f"split.val_size={val_size}: {len(pairs)} rows cannot give a non-empty training and validation set")
    return train_test_split(pairs, test_size=n_val, random_state=seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_csv", type=Path, help="query,title,label CSV (data/raw/pairs.csv)")
    parser.add_argument("split_dir", type=Path, help="output folder for train.csv and val.csv (data/split)")
    args = parser.parse_args()
    params = load_params("split")

    pairs = read_pairs(args.raw_csv)
    train_pairs, val_pairs = split_pairs(pairs, params["val_size"], params["seed"])
    with atomic_path(args.split_dir) as split_dir:
        split_dir.mkdir()
        train_pairs.to_csv(split_dir / "train.csv", index=False)
        val_pairs.to_csv(split_dir / "val.csv", index=False)
    print(f"split: {len(train_pairs)} training and {len(val_pairs)} validation pairs")


if __name__ == "__main__":
    run(main)
