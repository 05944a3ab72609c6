"""Relevance metrics: checked by hand on three queries, and null (never NaN) where undefined."""
import json

import numpy as np
import pytest

from stages.metrics import TfidfBaseline, classification_metrics, rank_titles, ranking_metrics, relevance_metrics

# Three queries: q1 ranks 1,0,1,0; q2 ranks its only relevant title third; q3 has none.
QUERIES = ["q1"] * 4 + ["q2"] * 3 + ["q3"] * 2
LABELS = [1, 0, 1, 0, 1, 0, 0, 0, 0]
SCORES = [0.9, 0.8, 0.7, 0.1, 0.2, 0.5, 0.4, 0.3, 0.6]


def test_ranking_metrics_match_a_hand_computation():
    metrics = ranking_metrics(QUERIES, LABELS, SCORES)
    q1_ndcg = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))  # relevant at ranks 1 and 3; ideal 1 and 2
    q2_ndcg = (1 / np.log2(4)) / 1  # relevant at rank 3
    assert metrics["ndcg@10"] == pytest.approx((q1_ndcg + q2_ndcg) / 2)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert metrics["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert (metrics["queries_ranked"], metrics["queries_without_relevant"]) == (2, 1)


def test_ndcg_agrees_with_scikit_learn_when_there_are_no_ties():
    from sklearn.metrics import ndcg_score

    q1 = slice(0, 4)
    ours = ranking_metrics(QUERIES[q1], LABELS[q1], SCORES[q1])["ndcg@10"]
    assert ours == pytest.approx(ndcg_score([LABELS[q1]], [SCORES[q1]], k=10))


def test_ties_are_broken_against_the_model():
    assert list(rank_titles([1, 0], [0.5, 0.5])) == [0, 1]
    assert ranking_metrics(["q", "q"], [1, 0], [0.5, 0.5])["mrr@10"] == 0.5


def test_classification_metrics_at_the_stated_threshold():
    metrics = classification_metrics(LABELS, SCORES)
    # Predicted relevant (score >= 0.5): rows 0, 1, 2, 5, 8; truly relevant: rows 0, 2, 4.
    assert metrics["threshold"] == 0.5
    assert metrics["accuracy"] == pytest.approx(5 / 9)
    assert metrics["precision"] == pytest.approx(2 / 5)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.5)
    assert 0 < metrics["roc_auc"] < 1 and 0 < metrics["average_precision"] < 1


def test_one_class_validation_set_gives_null_metrics_and_a_warning():
    with pytest.warns(UserWarning, match="undefined on this validation set.*roc_auc"):
        metrics = relevance_metrics(["q1", "q1", "q2"], [0, 0, 0], [0.7, 0.2, 0.1])
    for name in ("roc_auc", "average_precision", "recall", "ndcg@10", "mrr@10", "map", "precision@5"):
        assert metrics[name] is None, name
    assert metrics["precision"] == 0.0 and metrics["accuracy"] == pytest.approx(2 / 3)
    assert "NaN" not in json.dumps(metrics)


def test_tfidf_baseline_scores_shared_words():
    baseline = TfidfBaseline().fit_chunk(["covid masks", "bats origin"]).fit_chunk(["vaccine trial"])
    scores = baseline.scores(["covid masks", "covid masks"], ["masks in schools", "bats in caves"])
    assert scores[0] > 0 and scores[1] == 0


def test_tfidf_baseline_fitted_in_chunks_scores_as_scikit_learns_vectorizer():
    """Up to hash collisions, which these few words do not have: the same vectors as TfidfVectorizer
    fitted on all the text at once, and words outside the fitted text ignored."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    fit = ["covid masks in schools", "bats origin", "vaccine trial of masks", "masks masks bats"]
    queries, titles = ["covid masks", "bats and masks", "unseen words"], ["masks in schools", "bats in caves", "unseen"]
    baseline = TfidfBaseline().fit_chunk(fit[:1]).fit_chunk(fit[1:])
    vectorizer = TfidfVectorizer().fit(fit)
    expected = np.asarray(vectorizer.transform(queries).multiply(vectorizer.transform(titles)).sum(axis=1)).ravel()
    np.testing.assert_allclose(baseline.scores(queries, titles), expected, atol=1e-12)
    assert expected[0] > 0 and expected[2] == 0


def test_a_score_without_threshold_gets_only_threshold_free_metrics():
    metrics = relevance_metrics(QUERIES, LABELS, SCORES, threshold=None)
    assert sorted(metrics) == ["average_precision", "map", "mrr@10", "ndcg@10", "precision@5",
                               "queries_ranked", "queries_without_relevant", "roc_auc"]
