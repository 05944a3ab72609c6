"""split: schema checks on the raw CSV and a seeded train/validation split."""
import pandas as pd
import pytest

from stages.common import StageError, read_pairs
from stages.split import split_pairs


def test_split_is_seeded_and_partitions_the_rows(pairs_csv):
    pairs = read_pairs(pairs_csv)
    train_pairs, val_pairs = split_pairs(pairs, 0.2, seed=3)
    again_train, _ = split_pairs(pairs, 0.2, seed=3)
    other_train, _ = split_pairs(pairs, 0.2, seed=4)
    assert len(val_pairs) == round(0.2 * len(pairs)) and len(train_pairs) + len(val_pairs) == len(pairs)
    assert set(train_pairs.index).isdisjoint(val_pairs.index)
    assert train_pairs.index.equals(again_train.index) and not train_pairs.index.equals(other_train.index)


@pytest.mark.parametrize("val_size", [0, 1, 1.5, 0.001])
def test_val_size_outside_what_the_rows_allow_is_refused(pairs_csv, val_size):
    with pytest.raises(StageError, match=f"split.val_size={val_size}"):
        split_pairs(read_pairs(pairs_csv), val_size, seed=0)


def test_read_pairs_accepts_bom_quoted_commas_and_extra_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes('\ufeffquery,title,label,source\ncovid masks,"Masks, respirators and\nface coverings",1,x\n'
                     .encode("utf-8"))
    pairs = read_pairs(path)
    assert list(pairs.columns) == ["query", "title", "label"]
    assert pairs.loc[0, "title"] == "Masks, respirators and\nface coverings" and pairs.loc[0, "label"] == 1


@pytest.mark.parametrize(("content", "message"), [
    ("", "file is empty"),
    ("query,title,label\n", "no rows after the header"),
    ("query,label\nq,1\n", "missing column\\(s\\) title"),
    ("query,title,label\nq,t,1\nq, ,0\n", "row 3: column 'title' is empty"),
    ("query,title,label\nq,t,yes\n", "row 2: column 'label' is 'yes'; expected 0 or 1"),
    ("query,title,label\nq,t,2\n", "row 2: column 'label' is '2'; expected 0 or 1"),
])
def test_bad_csv_is_refused_naming_file_and_row(tmp_path, content, message):
    path = tmp_path / "pairs.csv"
    path.write_text(content)
    with pytest.raises(StageError, match=f"^{path}: {message}"):
        read_pairs(path)


def test_non_utf8_csv_is_refused(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"query,title,label\nq,caf\xe9,1\n")
    with pytest.raises(StageError, match="not a readable UTF-8 CSV"):
        read_pairs(path)
    assert isinstance(pd.read_csv(path, encoding="latin-1"), pd.DataFrame)
