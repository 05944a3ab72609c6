"""encode: tokenize the (query, title) pairs with the pretrained tokenizer.

Pairs are truncated to encode.max_length but not padded: the train stage pads
each batch to its longest pair, which wastes far less compute than padding all to max_length.
"""
import argparse
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run

SPLITS = ("train", "val")


def pair_rows(path):
    for chunk in read_pairs(path):
        yield from chunk.to_dict("records")


def load_pairs(csv_path, cache_dir):
    """The pairs of a checked query,title,label CSV as a datasets.Dataset written to Arrow files in
    `cache_dir` as the CSV streams, and memory-mapped from there."""
    from datasets import Dataset, Features, Value

    features = Features({"query": Value("string"), "title": Value("string"), "label": Value("int64")})
    return Dataset.from_generator(pair_rows, features=features, gen_kwargs={"path": str(csv_path)},
                                  cache_dir=str(cache_dir))


def encode_pairs(pairs, tokenizer, max_length):
    """`pairs` (a datasets.Dataset of query, title, label) plus the tokenizer's outputs (input_ids,
    attention_mask, and for BERT token_type_ids). The Trainer drops the columns the model does not
    take. A dataset read from files is encoded into a file beside them, batch by batch."""
    return pairs.map(
        lambda batch: tokenizer(batch["query"], batch["title"], truncation=True, max_length=max_length),
        batched=True,
        desc="Tokenizing",
        new_fingerprint=f"encode-{max_length}",  # fixed, so identical inputs give identical files
    )


def position_offset(config):
    """Rows of the position table a model never uses for tokens: RoBERTa and XLM-R number positions
    from pad_token_id + 1 (514 rows for 512 tokens)."""
    return config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("split_dir", type=Path, help="folder with train.csv and val.csv (data/split)")
    parser.add_argument("model_dir", type=Path, help="pretrained model folder holding the tokenizer (models/pretrained)")
    parser.add_argument("encoded_dir", type=Path, help="output folder, one dataset per split (data/encoded)")
    args = parser.parse_args()
    max_length = load_params("encode")["max_length"]
    if not isinstance(max_length, int) or max_length < 8:
        raise StageError(f"encode.max_length={max_length}: expected an integer of at least 8")

    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    config = AutoConfig.from_pretrained(args.model_dir, local_files_only=True)
    longest = min(config.max_position_embeddings - position_offset(config), tokenizer.model_max_length)
    if max_length > longest:
        raise StageError(f"encode.max_length={max_length}: the model accepts at most {longest} tokens")
    with atomic_path(args.encoded_dir) as encoded_dir:
        for split in SPLITS:
            pairs = load_pairs(args.split_dir / f"{split}.csv", encoded_dir.parent / "cache")
            encode_pairs(pairs, tokenizer, max_length).save_to_disk(encoded_dir / split)


if __name__ == "__main__":
    run(main)
