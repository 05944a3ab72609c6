"""encode: pairs become [CLS] query [SEP] title [SEP], truncated but not padded, streamed from the CSV to disk."""
import pandas as pd
from datasets import Dataset
from transformers import AutoTokenizer

from stages.encode import encode_pairs, load_pairs


def test_pairs_are_encoded_as_segments_and_truncated_without_padding(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = pd.DataFrame({"query": ["coronavirus vaccine", "masks"],
                          "title": ["vaccine antibody trial study analysis of the cohort", "face"],
                          "label": [1, 0]})
    encoded = encode_pairs(Dataset.from_pandas(pairs), tokenizer, max_length=8)
    assert sorted(encoded.column_names) == ["attention_mask", "input_ids", "label", "query", "title", "token_type_ids"]
    long_row, short_row = encoded[0], encoded[1]
    assert len(long_row["input_ids"]) == 8
    assert tokenizer.convert_ids_to_tokens(short_row["input_ids"]) == ["[CLS]", "masks", "[SEP]", "face", "[SEP]"]
    assert short_row["token_type_ids"] == [0, 0, 0, 1, 1] and short_row["attention_mask"] == [1] * 5
    assert encoded["label"] == [1, 0]


def test_same_inputs_give_byte_identical_files(tiny_bert, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    csv_path = tmp_path / "pairs.csv"
    pd.DataFrame({"query": ["q one", "q two"], "title": ["t one", "t two"], "label": [1, 0]}).to_csv(csv_path, index=False)
    for name in ("a", "b"):
        pairs = load_pairs(csv_path, tmp_path / f"cache-{name}")
        encode_pairs(pairs, tokenizer, max_length=16).save_to_disk(tmp_path / name)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_pairs_are_read_from_the_csv_into_arrow_files_not_memory(tiny_bert, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("query,title,label\nNA,null,1\nq,\"a, b\",0\n")
    encoded = encode_pairs(load_pairs(csv_path, tmp_path / "cache"), tokenizer, max_length=16)
    assert encoded.cache_files and all(f["filename"].startswith(str(tmp_path / "cache")) for f in encoded.cache_files)
    assert encoded["query"][:] == ["NA", "q"] and encoded["title"][:] == ["null", "a, b"], "text stays text"
    assert encoded["label"][:] == [1, 0]
