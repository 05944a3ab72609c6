"""encode: pairs become [CLS] query [SEP] title [SEP], truncated but not padded."""
import pandas as pd
from transformers import AutoTokenizer

from stages.encode import encode_pairs


def test_pairs_are_encoded_as_segments_and_truncated_without_padding(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = pd.DataFrame({"query": ["coronavirus vaccine", "masks"],
                          "title": ["vaccine antibody trial study analysis of the cohort", "face"],
                          "label": [1, 0]})
    encoded = encode_pairs(pairs, tokenizer, max_length=8)
    assert sorted(encoded.column_names) == ["attention_mask", "input_ids", "label", "query", "title", "token_type_ids"]
    long_row, short_row = encoded[0], encoded[1]
    assert len(long_row["input_ids"]) == 8
    assert tokenizer.convert_ids_to_tokens(short_row["input_ids"]) == ["[CLS]", "masks", "[SEP]", "face", "[SEP]"]
    assert short_row["token_type_ids"] == [0, 0, 0, 1, 1] and short_row["attention_mask"] == [1] * 5
    assert encoded["label"] == [1, 0]


def test_same_inputs_give_byte_identical_files(tiny_bert, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    pairs = pd.DataFrame({"query": ["q one", "q two"], "title": ["t one", "t two"], "label": [1, 0]})
    for name in ("a", "b"):
        encode_pairs(pairs, tokenizer, max_length=16).save_to_disk(tmp_path / name)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
