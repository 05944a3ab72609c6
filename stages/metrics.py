"""Relevance metrics shared by the stages: the ONNX models' scores, classification at a threshold,
ranking per query, and the lexical baseline every run is compared with.

A metric that is undefined on the data at hand (ROC-AUC with one class, ranking metrics with
no query that has a relevant title) is None, written as null, never NaN.
"""
import math
import warnings

import numpy as np

THRESHOLD = 0.5  # on P(relevant): the same decision as the argmax over the two logits
RANK_CUTOFF = 10  # nDCG@10 and MRR@10
PRECISION_CUTOFF = 5  # precision@5


def query_ids(queries):
    """Each pair's query (a pandas Series of the texts) as a 64-bit hash: how evaluate, vespa and train
    group pairs by query for the ranking metrics, 8 bytes a pair in memory rather than the text."""
    import pandas as pd

    return pd.util.hash_pandas_object(queries, index=False).to_numpy()


def defined(value):
    value = float(value)
    return None if math.isnan(value) else value


def model_scorers(model_paths):
    """A RelevanceScorer, the scorer a search service runs, for each ONNX model by name, on the GPU
    through onnxruntime's CUDA execution provider where that is installed, else on every CPU core."""
    import onnxruntime

    from scorer import RelevanceScorer

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
    return {name: RelevanceScorer(path, providers=providers) for name, path in model_paths.items()}


def runtime(scorers):
    """Which runtime scored the pairs, recorded beside the metrics."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__,
            "providers": {name: scorer.session.get_providers()[0] for name, scorer in scorers.items()}}


def model_scores(scorers, pairs):
    """P(relevant) of each (query, title) pair of a DataFrame from each scorer, by name."""
    queries, titles = pairs["query"].tolist(), pairs["title"].tolist()
    return {name: scorer.scores(queries, titles) for name, scorer in scorers.items()}


def classification_metrics(labels, scores, threshold=THRESHOLD):
    """ROC-AUC and average precision over all thresholds; with a `threshold` (None for a score with
    no natural one, such as a similarity) also accuracy, precision, recall and F1 at it."""
    from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support, roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores)
    metrics = {}
    if threshold is not None:
        predicted = (scores >= threshold).astype(int)
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, average="binary", zero_division=np.nan)
        metrics = {"threshold": float(threshold), "accuracy": defined(accuracy_score(labels, predicted)),
                   "precision": defined(precision), "recall": defined(recall), "f1": defined(f1)}
    both_classes = len(np.unique(labels)) == 2
    metrics["roc_auc"] = defined(roc_auc_score(labels, scores)) if both_classes else None
    metrics["average_precision"] = defined(average_precision_score(labels, scores)) if labels.any() else None
    return metrics


def rank_titles(labels, scores):
    """Labels of one query's titles, best score first. Ties are broken pessimistically
    (irrelevant before relevant), so a model earns nothing from scores it cannot tell apart."""
    order = np.lexsort((np.asarray(labels), -np.asarray(scores)))
    return np.asarray(labels)[order]


def query_ranking_metrics(ranked):
    """nDCG@10, MRR@10, average precision and precision@5 for one query's ranked binary labels."""
    discounts = np.log2(np.arange(2, min(len(ranked), RANK_CUTOFF) + 2))
    gains = ranked[:RANK_CUTOFF] / discounts
    ideal = np.sort(ranked)[::-1][:RANK_CUTOFF] / discounts
    hits = np.flatnonzero(ranked)
    first_hit = hits[0] + 1
    return {
        f"ndcg@{RANK_CUTOFF}": float(gains.sum() / ideal.sum()),
        f"mrr@{RANK_CUTOFF}": float(1 / first_hit) if first_hit <= RANK_CUTOFF else 0.0,
        "map": float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1))),
        f"precision@{PRECISION_CUTOFF}": float(ranked[:PRECISION_CUTOFF].sum() / PRECISION_CUTOFF),
    }


def ranking_metrics(queries, labels, scores):
    """Per-query ranking metrics averaged over the queries that have at least one relevant title."""
    import pandas as pd

    frame = pd.DataFrame({"query": queries, "label": np.asarray(labels), "score": np.asarray(scores)})
    per_query = [query_ranking_metrics(rank_titles(group["label"], group["score"]))
                 for _, group in frame.groupby("query", sort=True) if group["label"].any()]
    names = [f"ndcg@{RANK_CUTOFF}", f"mrr@{RANK_CUTOFF}", "map", f"precision@{PRECISION_CUTOFF}"]
    result = {name: (float(np.mean([m[name] for m in per_query])) if per_query else None) for name in names}
    result["queries_ranked"] = len(per_query)
    result["queries_without_relevant"] = int(frame["query"].nunique()) - len(per_query)
    return result


def metrics_by_scorer(queries, labels, scores, stage):
    """relevance_metrics of each scorer's scores by name (the TF-IDF baseline's, a similarity,
    without a threshold), printing each warning about undefined metrics once as `<stage>: warning:`."""
    with warnings.catch_warnings(record=True) as undefined:
        warnings.simplefilter("always")
        summary = {name: relevance_metrics(queries, labels, values, threshold=None if name == "tfidf" else THRESHOLD)
                   for name, values in scores.items()}
    for warning in dict.fromkeys(str(w.message) for w in undefined):
        print(f"{stage}: warning: {warning}")
    return summary


def relevance_metrics(queries, labels, scores, threshold=THRESHOLD):
    """Classification and ranking metrics for one scorer, with a warning naming the undefined ones."""
    metrics = {**classification_metrics(labels, scores, threshold), **ranking_metrics(queries, labels, scores)}
    undefined = sorted(name for name, value in metrics.items() if value is None)
    if undefined:
        warnings.warn(f"undefined on this validation set (written as null): {', '.join(undefined)}", stacklevel=2)
    return metrics


class TfidfBaseline:
    """Cosine similarity of TF-IDF vectors of a query and its title, with the document frequencies of
    the training pairs' queries and titles (so validation text does not leak into them), counted chunk
    by chunk. Words are hashed into 2^20 columns instead of a vocabulary, so memory stays fixed however
    much text is fitted; a word no training text has weighs nothing, as it would outside a fitted
    vocabulary. IDF is scikit-learn's smoothed one, log((1 + n) / (1 + df)) + 1."""

    def __init__(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.hashing = HashingVectorizer(alternate_sign=False, norm=None)
        self.document_frequency = np.zeros(self.hashing.n_features)
        self.documents = 0

    def fit_chunk(self, texts):
        counts = self.hashing.transform(texts)
        self.document_frequency += np.bincount(counts.indices, minlength=self.hashing.n_features)
        self.documents += counts.shape[0]
        return self

    def scores(self, queries, titles):
        from sklearn.preprocessing import normalize

        seen = self.document_frequency > 0
        idf = np.where(seen, np.log((1 + self.documents) / (1 + self.document_frequency)) + 1, 0.0)
        query_vectors, title_vectors = (normalize(self.hashing.transform(texts).multiply(idf).tocsr())
                                        for texts in (queries, titles))
        return np.asarray(query_vectors.multiply(title_vectors).sum(axis=1)).ravel()
