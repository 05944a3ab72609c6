"""split: schema checks on the raw CSV and seeded group, random and k-fold splits, out of core."""
import json
import re
import sys

import pandas as pd
import pytest

from stages.common import StageError, read_all_pairs, read_pairs
from stages.split import split_csv
from tests.conftest import run_cli
from tests.tiny import set_params

HOLDOUT = {"strategy": "group", "val_size": 0.25, "folds": None, "fold": 0, "seed": 3, "conflicting_labels": "relevant"}


def split(csv_path, params, tmp_path):
    """The split stage's work on `csv_path`: (train pairs, val pairs, counts), read back from its files."""
    out = tmp_path / f"split-{len(list(tmp_path.glob('split-*')))}"
    (out / "work").mkdir(parents=True)
    counts = split_csv(csv_path, out, {**HOLDOUT, **params}, out / "work")
    return read_all_pairs(out / "train.csv"), read_all_pairs(out / "val.csv"), counts


def pair_set(pairs):
    return set(zip(pairs["query"], pairs["title"]))


def test_group_split_keeps_every_query_on_one_side(pairs_csv, tmp_path):
    pairs = read_all_pairs(pairs_csv)
    train_pairs, val_pairs, counts = split(pairs_csv, {}, tmp_path)
    assert set(train_pairs["query"]).isdisjoint(val_pairs["query"])
    assert val_pairs["query"].nunique() == round(0.25 * pairs["query"].nunique())
    assert pair_set(train_pairs) | pair_set(val_pairs) == pair_set(pairs) and len(train_pairs) + len(val_pairs) == len(pairs)
    assert (counts["val_pairs"], counts["val_queries"]) == (len(val_pairs), val_pairs["query"].nunique())


def test_both_sides_keep_the_rows_order_in_the_raw_csv(pairs_csv, tmp_path):
    order = {pair: row for row, pair in enumerate(zip(*read_all_pairs(pairs_csv)[["query", "title"]].values.T))}
    for side in split(pairs_csv, {}, tmp_path)[:2]:
        rows = [order[pair] for pair in zip(side["query"], side["title"])]
        assert rows == sorted(rows)


def test_random_split_is_by_pairs_as_in_the_reference_recipe(pairs_csv, tmp_path):
    pairs = read_all_pairs(pairs_csv)
    train_pairs, val_pairs, _ = split(pairs_csv, {"strategy": "random", "val_size": 0.2}, tmp_path)
    assert len(val_pairs) == round(0.2 * len(pairs)) and pair_set(train_pairs).isdisjoint(pair_set(val_pairs))
    assert set(train_pairs["query"]) & set(val_pairs["query"]), "rows of one query land on both sides"


@pytest.mark.parametrize("strategy", ["group", "random"])
def test_same_params_give_identical_splits_and_another_seed_differs(pairs_csv, tmp_path, strategy):
    first, again, other = (split(pairs_csv, {"strategy": strategy, **change}, tmp_path)[1]
                           for change in ({}, {}, {"seed": 4}))
    assert first.to_csv() == again.to_csv() and first.to_csv() != other.to_csv()


@pytest.mark.parametrize("strategy", ["group", "random"])
def test_folds_partition_the_pairs(pairs_csv, tmp_path, strategy):
    pairs = read_all_pairs(pairs_csv)
    folds = [split(pairs_csv, {"strategy": strategy, "folds": 4, "fold": k}, tmp_path) for k in range(4)]
    val_pairs = [pair_set(val) for _, val, _ in folds]
    assert sorted(pair for fold in val_pairs for pair in fold) == sorted(pair_set(pairs))
    assert max(map(len, val_pairs)) - min(map(len, val_pairs)) <= (12 if strategy == "group" else 1)
    for train_pairs, val, _ in folds:
        assert pair_set(train_pairs).isdisjoint(pair_set(val))
        if strategy == "group":
            assert set(train_pairs["query"]).isdisjoint(val["query"])


@pytest.mark.parametrize(("change", "message"), [
    ({"strategy": "stratified"}, "split.strategy=stratified: expected one of group, random"),
    ({"val_size": 0}, "split.val_size=0: expected a fraction between 0 and 1"),
    ({"val_size": 1.5}, "split.val_size=1.5"),
    ({"folds": 1}, "split.folds=1: expected null"),
    ({"folds": 50}, "split.folds=50: the data has only 20 distinct queries"),
    ({"folds": 5, "fold": 5}, "split.fold=5: expected an integer from 0 to 4"),
    ({"strategy": "random", "val_size": 0.001}, "split.val_size=0.001: 240 pairs cannot give"),
])
def test_impossible_split_params_are_refused_naming_the_param(pairs_csv, tmp_path, change, message):
    with pytest.raises(StageError, match=re.escape(message)):
        split(pairs_csv, change, tmp_path)


def test_too_few_queries_for_a_group_split_is_refused(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("query,title,label\nq,a,1\nq,b,0\n")
    with pytest.raises(StageError, match="split.strategy=group: needs at least 2 distinct queries, the data has 1"):
        split(path, {}, tmp_path)


def test_split_stage_accepts_bom_quoted_commas_and_newlines_and_extra_columns(fresh_project):
    rows = ['\ufeffquery,title,label,source', 'covid masks,"Masks, respirators and\nface coverings",1,x',
            "covid masks,Football league,0,y", "bats,Bats and spillover,1,z", "bats,Cooking recipes,0,w",
            "vaccine,Vaccine trial,1,v", "vaccine,Stock market,0,u", 'heart,"Cardiac ""study""",1,t', "heart,Galaxy orbit,0,s"]
    result = run_split(fresh_project, "\n".join(rows) + "\n")
    assert result.returncode == 0, result.stderr
    both = pd.concat([read_all_pairs(fresh_project / "data/split" / name) for name in ("train.csv", "val.csv")])
    assert list(both.columns) == ["query", "title", "label"] and len(both) == 8
    assert {"Masks, respirators and\nface coverings", 'Cardiac "study"'} <= set(both["title"])


def run_split(project, content):
    """Run the real split stage on `content` as data/raw/pairs.csv."""
    raw = project / "data/raw/pairs.csv"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return run_cli([sys.executable, "-m", "stages.split", "data/raw/pairs.csv", "data/split", "results/split/metrics.json"],
                   project, check=False)


def check_csv(tmp_path, content, policy="error"):
    """The split stage's checks of a raw CSV, called directly."""
    path = tmp_path / "pairs.csv"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    split(path, {"conflicting_labels": policy}, tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    ("", "file is empty"),
    ("query,title,label\n", "no rows after the header"),
    ("query,label\nq,1\n", "missing column(s) title; expected query,title,label"),
    ("title,label\nt,1\n", "missing column(s) query; expected query,title,label"),
    ("query,title\nq,t\n", "missing column(s) label; expected query,title,label"),
    ("query,title,label\nq,t,1\nq, ,0\n", "row 3: column 'title' is empty"),
    ("query,title,label\nq,t,1\n  ,t,0\n", "row 3: column 'query' is empty"),
    ("query,title,label\nq,t,yes\n", "row 2: column 'label' is 'yes'; expected 0 or 1"),
    ("query,title,label\nq,t,2\n", "row 2: column 'label' is '2'; expected 0 or 1"),
    ("query,title,label\nq,t,1.5\n", "row 2: column 'label' is '1.5'; expected 0 or 1"),
    ("query,title,label\nq,t,\n", "row 2: column 'label' is ''; expected 0 or 1"),
    (b"query,title,label\nq,caf\xe9,1\n", "not a readable UTF-8 CSV"),
    ("query,title,label\nq,a,1\nq,b,0\nr,a,0\nq,a,0\n", "rows 2 and 5 label the same pair ('q', 'a') differently"),
    ("query,title,label\nq,a,0\nq,b,0\nr,c,0\n", "every pair has label 0; a classifier needs relevant (1) and irrelevant (0) pairs"),
])
def test_bad_csv_is_refused_naming_file_and_row(tmp_path, content, message):
    with pytest.raises(StageError, match="^" + re.escape(f"{tmp_path / 'pairs.csv'}: {message}")):
        check_csv(tmp_path, content)


@pytest.mark.parametrize(("content", "message"), [
    ("query,title\nq,t\n", "missing column(s) label; expected query,title,label"),  # the CSV's shape
    ("query,title,label\nq,a,1\nq,b,0\nr,a,0\nq,a,0\n", "rows 2 and 5 label the same pair"),  # its pairs
])
def test_bad_csv_stops_the_split_stage_in_one_line_and_writes_nothing(fresh_project, content, message):
    set_params(fresh_project, {"split": {"conflicting_labels": "error"}})
    result = run_split(fresh_project, content)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: data/raw/pairs.csv: {message}")
    assert not (fresh_project / "data/split").exists() and not (fresh_project / "results").exists()


CONFLICTING = "query,title,label\nq,a,1\nq,b,0\nr,a,0\nq,a,0\nq,b,0\nr,c,1\n"  # ('q', 'a') has both labels


@pytest.mark.parametrize(("policy", "expected"), [
    ("relevant", {("q", "a"): 1, ("q", "b"): 0, ("r", "a"): 0, ("r", "c"): 1}),
    ("drop", {("q", "b"): 0, ("r", "a"): 0, ("r", "c"): 1}),
])
def test_pairs_labelled_both_ways_are_resolved_by_the_policy(tmp_path, policy, expected):
    path = tmp_path / "pairs.csv"
    path.write_text(CONFLICTING)
    train_pairs, val_pairs, counts = split(path, {"conflicting_labels": policy, "val_size": 0.5}, tmp_path)
    pairs = pd.concat([train_pairs, val_pairs])
    assert dict(zip(zip(pairs["query"], pairs["title"]), pairs["label"])) == expected
    assert {key: counts[key] for key in ("rows", "repeated_rows", "conflicting_pairs", "conflicting_labels", "pairs")} == {
        "rows": 6, "repeated_rows": 2 if policy == "relevant" else 1, "conflicting_pairs": 1,
        "conflicting_labels": policy, "pairs": len(expected)}


def test_unknown_conflict_policy_is_refused(tmp_path):
    with pytest.raises(StageError, match="split.conflicting_labels=first: expected one of relevant, drop, error"):
        check_csv(tmp_path, CONFLICTING, policy="first")


def test_split_stage_counts_repeated_and_conflicting_pairs_into_its_report(fresh_project, pairs_csv):
    rows = pairs_csv.read_text().splitlines()
    query, title, label = rows[1].split(",")
    flipped = f"{query},{title},{1 - int(label)}"
    result = run_split(fresh_project, "\n".join([*rows, *rows[2:4], flipped]) + "\n")
    assert result.returncode == 0, result.stderr
    assert ("split: data/raw/pairs.csv: 3 row(s) repeating a pair merged; 1 pair(s) labelled both 0 and 1 kept as "
            "relevant (split.conflicting_labels=relevant)") in result.stdout
    report = json.loads((fresh_project / "results/split/report.json").read_text())
    assert (report["rows"], report["pairs"], report["conflicting_pairs"]) == (len(rows) + 2, len(rows) - 1, 1)
    assert report["train_pairs"] + report["val_pairs"] == len(rows) - 1


def test_read_pairs_is_the_one_reader_of_pair_csvs(tmp_path):
    """encode, quantize and evaluate read the split files with the same checks."""
    path = tmp_path / "val.csv"
    path.write_bytes(b"query,title,label\nq,caf\xe9,1\n")
    with pytest.raises(StageError, match=f"^{path}: not a readable UTF-8 CSV"):
        read_all_pairs(path)


def test_rows_are_checked_and_numbered_across_chunks(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("query,title,label\n" + "q,t,1\n" * 5 + "q,t,x\n")
    with pytest.raises(StageError, match=re.escape(f"{path}: row 7: column 'label' is 'x'; expected 0 or 1")):
        list(read_pairs(path, chunk_rows=2))
