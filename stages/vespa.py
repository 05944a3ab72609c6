"""vespa: write a Vespa application package that serves the model the way the CORD-19 search app
runs it: titles retrieved by BM25, the top vespa.rerank_count hits reranked by the exported model in
the global phase. Deploy it as it is (`vespa deploy models/vespa`); README "Serving in Vespa".

The title's tokens are a tensor attribute filled by `embed tokenizer` (the hugging-face-tokenizer
component on the shipped tokenizer.json), the query's come from `embed(tokenizer, @query)`, and the
model's inputs are built from both by Vespa's token features (tokenInputIds or customTokenInputIds,
tokenTypeIds, tokenAttentionMask; see token_features below), L = encode.max_length tokens long.
A model whose tokenizer joins a pair otherwise (RoBERTa's double separator) gets a one-line reason,
NOT_SERVABLE.txt, instead of a package.
"""
import argparse
import json
import shutil
from pathlib import Path

from stages.common import StageError, atomic_path, load_params, read_pairs, run

MODEL_FILES = ("model.onnx", "model.int8.onnx")
# Vespa's tokenInputIds hard-codes these: [CLS] and [SEP] of the bert-base-uncased vocabulary.
VESPA_CLS, VESPA_SEP = 101, 102
QUERY, TITLE = "query(q_tokens)", "attribute(title_tokens)"


def vespa_tokenizer(tokenizer_path):
    """tokenizer.json as Vespa's hugging-face-tokenizer component uses it, whatever the file says:
    no truncation, no padding, no special tokens (config-model's HuggingFaceTokenizer.java)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def embed(tokenizer, texts, length):
    """What `embed tokenizer` puts in a tensor<float>(d0[length]): the text's ids, cut or zero-padded."""
    return [(encoding.ids + [0] * length)[:length] for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def token_features(query_tensor, title_tensor, length, cls, sep):
    """input_ids, token_type_ids and attention_mask of one hit, computed as Vespa computes
    customTokenInputIds(cls, sep, length, q, t) (tokenInputIds: cls 101, sep 102), tokenTypeIds and
    tokenAttentionMask(length, q, t): vespa-engine/vespa, config-model/src/main/java/com/yahoo/schema/
    expressiontransforms/TokenTransformer.java. An argument's length is its count of non-zero ids
    (`sum(map(input, f(x)(x > 0)))`), its tokens the first that many of its tensor; the sequence
    CLS q SEP t SEP is cut at `length`, final SEP included, and zero-padded."""
    query_length, title_length = (sum(1 for token in tensor if token > 0) for tensor in (query_tensor, title_tensor))
    sequence = [cls, *query_tensor[:query_length], sep, *title_tensor[:title_length], sep]
    query_part, total = 1 + query_length + 1, len(sequence)
    return {"input_ids": (sequence + [0] * length)[:length],
            "token_type_ids": [0 if d1 < query_part else 1 if d1 < total else 0 for d1 in range(length)],
            "attention_mask": [1 if d1 < total else 0 for d1 in range(length)]}


def separators(tokenizer, inputs):
    """(cls, sep) when the tokenizer joins a pair as CLS query SEP title SEP with the token types
    Vespa gives them; else the reason Vespa's token features cannot build this model's inputs."""
    query, title = "query", "title"
    pair = tokenizer.encode(query, title)
    alone = [tokenizer.encode(text, add_special_tokens=False).ids for text in (query, title)]
    cls, sep = pair.ids[0], pair.ids[1 + len(alone[0])]
    expected = [cls, *alone[0], sep, *alone[1], sep]
    template = " ".join(pair.tokens)
    if pair.ids != expected:
        return None, (f"the tokenizer joins a pair as '{template}', and Vespa's token features put one separator "
                      f"between query and title (CLS query SEP title SEP)")
    types = [0] * (2 + len(alone[0])) + [1] * (1 + len(alone[1]))
    if "token_type_ids" in inputs and pair.type_ids != types:
        return None, f"the tokenizer gives '{template}' token types {pair.type_ids}, and Vespa's tokenTypeIds gives {types}"
    return (cls, sep), None


def rank_profile(metadata, length, cls, sep, rerank_count):
    """BM25 first, then the model on the top hits; the score is P(relevant) as metadata.json says."""
    from vespa.package import Function, GlobalPhaseRanking, RankProfile

    arguments = f"{length}, {QUERY}, {TITLE}"
    input_ids = (f"tokenInputIds({arguments})" if (cls, sep) == (VESPA_CLS, VESPA_SEP)
                 else f"customTokenInputIds({cls}, {sep}, {arguments})")
    features = {"input_ids": input_ids, "token_type_ids": f"tokenTypeIds({arguments})",
                "attention_mask": f"tokenAttentionMask({arguments})"}
    relevant = metadata["labels"].index("relevant")
    if metadata["probability"] == "sigmoid":
        score = f"sigmoid(reduce(logits{{d1:{relevant}}}, sum))"
    else:  # softmax over two logits: P(relevant) = sigmoid(relevant - other)
        score = f"sigmoid(reduce(logits{{d1:{relevant}}} - logits{{d1:{1 - relevant}}}, sum))"
    functions = [Function(name, features[name]) for name in metadata["inputs"]]
    return RankProfile(name="rerank", inputs=[(QUERY, f"tensor<float>(d0[{length}])")], first_phase="bm25(title)",
                       functions=[*functions, Function("logits", "onnx(relevance).logits")],
                       global_phase=GlobalPhaseRanking(expression=score, rerank_count=rerank_count),
                       summary_features=["firstPhase"])


def write_package(models_dir, package_dir, model_file, length, rerank_count, cls, sep):
    from vespa.package import (ApplicationPackage, Component, Document, Field, FieldSet, OnnxModel, Parameter,
                               Schema)

    metadata = json.loads((models_dir / "metadata.json").read_text(encoding="utf-8"))
    schema = Schema(name="doc", document=Document(fields=[
        Field(name="title", type="string", indexing=["index", "summary"], index="enable-bm25")]))
    schema.add_fields(Field(name="title_tokens", type=f"tensor<float>(d0[{length}])",
                            indexing=["input title", "embed tokenizer", "attribute"], is_document_field=False))
    schema.add_field_set(FieldSet(name="default", fields=["title"]))
    schema.add_model(OnnxModel(model_name="relevance", model_file_path=str(models_dir / model_file),
                               inputs={name: name for name in metadata["inputs"]}, outputs={"logits": "logits"}))
    schema.add_rank_profile(rank_profile(metadata, length, cls, sep, rerank_count))
    tokenizer = Component(id="tokenizer", type="hugging-face-tokenizer",
                          parameters=[Parameter("model", {"path": "models/tokenizer.json"})])
    ApplicationPackage(name="relevance", schema=[schema], components=[tokenizer]).to_files(package_dir)
    (package_dir / "models").mkdir(exist_ok=True)
    shutil.copyfile(models_dir / "tokenizer.json", package_dir / "models/tokenizer.json")


def longer_than(tokenizer, val_csv, length, batch=1000):
    """(validation pairs whose CLS query SEP title SEP is longer than `length` tokens, all pairs),
    `batch` pairs tokenized at a time: each tokenizers Encoding weighs a kilobyte or more."""
    longer = total = 0
    for chunk in read_pairs(val_csv):
        for start in range(0, len(chunk), batch):
            rows = chunk.iloc[start:start + batch]
            queries, titles = (tokenizer.encode_batch(rows[c].tolist(), add_special_tokens=False) for c in ("query", "title"))
            longer += sum(3 + len(query.ids) + len(title.ids) > length for query, title in zip(queries, titles))
        total += len(chunk)
    return longer, total


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models_dir", type=Path, help="the ONNX file vespa.model names, tokenizer.json, metadata.json (models)")
    parser.add_argument("val_csv", type=Path, help="validation pairs, to count those longer than L (data/split/val.csv)")
    parser.add_argument("package_dir", type=Path, help="output: the application package (models/vespa)")
    args = parser.parse_args()
    params, length = load_params("vespa"), load_params("encode")["max_length"]
    if params["model"] not in MODEL_FILES:
        raise StageError(f"vespa.model={params['model']}: expected one of {', '.join(MODEL_FILES)}")
    if not isinstance(params["rerank_count"], int) or params["rerank_count"] < 1:
        raise StageError(f"vespa.rerank_count={params['rerank_count']}: expected a positive integer")

    models_dir, model_file = args.models_dir, params["model"]
    metadata = json.loads((models_dir / "metadata.json").read_text(encoding="utf-8"))
    tokenizer = vespa_tokenizer(models_dir / "tokenizer.json")
    cls_sep, reason = separators(tokenizer, metadata["inputs"])
    with atomic_path(args.package_dir) as package_dir:
        if reason:
            package_dir.mkdir()
            (package_dir / "NOT_SERVABLE.txt").write_text(f"Not servable in Vespa: {reason}.\n", encoding="utf-8")
            print(f"vespa: warning: no package for this model: {reason}")
            return
        write_package(models_dir, package_dir, model_file, length, params["rerank_count"], *cls_sep)
    longer, total = longer_than(tokenizer, args.val_csv, length)
    features = "tokenInputIds" if cls_sep == (VESPA_CLS, VESPA_SEP) else "customTokenInputIds"
    print(f"vespa: {args.package_dir}: BM25, then {model_file} on the top {params['rerank_count']} hits; "
          f"inputs built by {features} (CLS {cls_sep[0]}, SEP {cls_sep[1]}), {length} tokens")
    if longer:
        print(f"vespa: {longer} of {total} validation pairs are longer than {length} tokens: Vespa cuts them at "
              f"{length}, final SEP included, where the scorer shortens the longer text and keeps both SEPs, so their "
              f"scores in Vespa differ from evaluate's")


if __name__ == "__main__":
    run(main)
