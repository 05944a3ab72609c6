"""Distillation (train.loss: margin_mse, mse): the losses against sentence-transformers' MarginMSELoss
and MSELoss on the same tiny model, texts and teacher scores (equal values and gradients); the teacher's
scores riding with each pair through train, with eval.teacher_spearman per epoch; evaluate's teacher
block; and the refusals: no teacher, or teacher scores that are not one per pair."""
import itertools
import json

import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.ranking import TEACHER_LOSS_FUNCTIONS, check_loss_params, margin_mse, mse, relevance_scores

# Two queries' titles with a teacher score each; the second query has one label only, which a
# teacher loss still learns from, and a third has a single title: no pair for margin_mse.
QUERIES = [
    ("coronavirus vaccine trial", [("Vaccine trial results in patients", 3.5), ("Stock market investors", -2.0),
                                   ("Antibody immunization study", 1.25), ("Football league transfer", -4.0)]),
    ("masks in covid", [("Face coverings of patients", 2.0), ("Telescope galaxy orbit", -1.5),
                        ("Respirators study", 0.5)]),
    ("children and school", [("Baking flour kitchen", -3.0)]),
]


@pytest.fixture(scope="module")
def cross_encoder(tiny_model):
    """sentence-transformers' CrossEncoder over the tiny MS MARCO-layout model (one relevance logit),
    in eval mode, so dropout does not tell the two paths apart."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_model("cross-encoder")), local_files_only=True, device="cpu")
    model.eval()
    return model


def our_scores(classifier, tokenizer):
    """Scores of every (query, title), as the project's steps give them, with teacher scores and groups."""
    rows = [(query, title, teacher, group) for group, (query, titles) in enumerate(QUERIES) for title, teacher in titles]
    queries, titles, teacher, groups = zip(*rows)
    inputs = tokenizer(list(queries), list(titles), padding=True, return_tensors="pt")
    return relevance_scores(classifier(**inputs).logits), torch.tensor(teacher), torch.tensor(groups)


def their_margin_mse(model):
    """MarginMSELoss on the (query, title i, title j) triplets of every pair i < j of one query's titles,
    labelled with the teacher's margin."""
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    triplets = [(query, first, second, t_first - t_second) for query, titles in QUERIES
                for (first, t_first), (second, t_second) in itertools.combinations(titles, 2)]
    queries, firsts, seconds, margins = zip(*triplets)
    return MarginMSELoss(model)([list(queries), list(firsts), list(seconds)], torch.tensor(margins))


def their_mse(model):
    from sentence_transformers.cross_encoder.losses import MSELoss

    pairs = [(query, title, teacher) for query, titles in QUERIES for title, teacher in titles]
    queries, titles, teacher = zip(*pairs)
    return MSELoss(model)([list(queries), list(titles)], torch.tensor(teacher))


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("name", "theirs"), [("margin_mse", their_margin_mse), ("mse", their_mse)])
def test_loss_and_gradients_equal_sentence_transformers(cross_encoder, name, theirs):
    """margin_mse over a step's query groups is MarginMSELoss over every pair of two titles of one query
    (9 triplets here: 6 of the first query, 3 of the second, none of the one-title third); mse is MSELoss."""
    from transformers import AutoTokenizer

    classifier = cross_encoder[0].model
    tokenizer = AutoTokenizer.from_pretrained(classifier.name_or_path, local_files_only=True)
    classifier.zero_grad()
    their_loss = theirs(cross_encoder)
    their_loss.backward()
    their_gradients = gradients(classifier)
    classifier.zero_grad()
    our_loss = TEACHER_LOSS_FUNCTIONS[name](*our_scores(classifier, tokenizer))
    our_loss.backward()
    our_gradients = gradients(classifier)
    classifier.zero_grad()

    assert our_loss.item() > 0
    torch.testing.assert_close(our_loss, their_loss, rtol=1e-5, atol=0)
    # sentence-transformers scores MarginMSELoss's columns in separate forward passes, each padded to its
    # own longest pair: the same sums in float32 over other padding, so the gradients agree to 1e-4 of the
    # largest gradient element (measured: 5.3e-5 at most), not to the last bit. MSELoss runs one forward
    # pass, as ours: those agree to 1e-5 of each tensor's largest element.
    assert our_gradients.keys() == their_gradients.keys() and len(our_gradients) > 10
    overall = max(gradient.abs().max().item() for gradient in their_gradients.values())
    for key, gradient in our_gradients.items():
        largest = their_gradients[key].abs().max().item()
        assert largest > 0 or (name, key) == ("margin_mse", "classifier.bias"), key  # a margin cancels the bias
        atol = 1e-4 * overall if name == "margin_mse" else 1e-5 * largest
        torch.testing.assert_close(gradient, their_gradients[key], rtol=1e-5, atol=atol)


def test_margin_mse_is_the_mean_squared_margin_error_over_every_pair_of_titles_of_one_group():
    scores = torch.tensor([1.0, 0.0, 2.0, 5.0, -1.0, 7.0], requires_grad=True)
    teacher = torch.tensor([0.5, 0.5, 1.0, 3.0, 0.0, 9.0])
    groups = torch.tensor([4, 4, 4, 9, 9, 2])  # the group of one title gives no pair
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    expected = np.mean([((scores[i] - scores[j]) - (teacher[i] - teacher[j])).item() ** 2 for i, j in pairs])
    loss = margin_mse(scores, teacher, groups)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert scores.grad[:5].abs().sum() > 0 and scores.grad[5] == 0, "no pair, no gradient"
    # the margins, not the scores: shifting a group's scores changes nothing
    assert margin_mse(scores.detach() + torch.tensor([3.0, 3, 3, -2, -2, 0]), teacher, groups).item() == pytest.approx(expected)
    assert margin_mse(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0])).item() == 0


def test_mse_is_the_mean_squared_error_of_the_scores():
    scores, teacher = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, -1.0, 2.5])
    assert mse(scores, teacher, torch.tensor([0, 0, 1])).item() == pytest.approx((1 + 1 + 4) / 3)


@pytest.mark.parametrize("loss", ["margin_mse", "mse"])
def test_a_teacher_loss_is_refused_without_teacher_scores_and_accepted_with_them(loss):
    with pytest.raises(StageError, match=rf"^train\.loss={loss} distils a teacher's scores and needs teacher\.name, "
                                         r"the teacher model: data/teacher holds no scores \(teacher\.name: null\)") as refused:
        check_loss_params({"loss": loss})
    assert "\n" not in str(refused.value)
    assert check_loss_params({"loss": loss}, teacher=True) == loss


def test_teacher_spearman_is_the_rank_correlation_of_the_models_scores_with_the_teachers():
    from scipy.stats import spearmanr

    from stages.training import compute_metrics

    logits = np.array([[0.2, 1.0], [1.0, -1.0], [0.0, 0.5], [0.3, 0.3]], dtype=np.float32)
    labels, teacher = np.array([1, 0, 1, 0]), np.array([2.0, -3.0, 1.5, 0.5])
    metrics = compute_metrics((logits, labels), teacher=teacher)
    assert metrics["teacher_spearman"] == pytest.approx(spearmanr(logits[:, 1] - logits[:, 0], teacher).statistic)
    assert metrics["teacher_spearman"] == pytest.approx(1.0)
    assert "teacher_spearman" not in compute_metrics((logits, labels))
    assert "teacher_spearman" not in compute_metrics((logits, labels), teacher=np.zeros(4)), "undefined: left out"


def write_teacher_scores(project, train=None, val=None):
    """data/teacher/{train,val}.npy as teach writes them: given arrays, or the model's own labels
    turned into scores for any left None."""
    import pandas as pd

    teacher_dir = project / "data/teacher"
    for split, scores in (("train", train), ("val", val)):
        if scores is None:
            labels = pd.read_csv(project / f"data/split/{split}.csv")["label"].to_numpy()
            scores = np.where(labels == 1, 2.0, -2.0) + np.random.default_rng(0).normal(0, 1, len(labels))
        np.save(teacher_dir / f"{split}.npy", np.asarray(scores, dtype=np.float32))


def test_teacher_scores_of_another_count_than_the_pairs_stop_train_in_one_line(project):
    from tests.conftest import run_stages_in_process
    from tests.tiny import set_params

    write_teacher_scores(project, train=np.zeros(5))
    set_params(project, {"train": {"loss": "margin_mse"}})
    with pytest.raises(SystemExit) as stopped:
        run_stages_in_process(project, ["train"])
    message = str(stopped.value)
    assert message.startswith("error: teacher.name: data/teacher/train.npy holds 5 teacher scores for the ") and "\n" not in message
    assert "train pairs, one per pair in order expected" in message


def test_margin_mse_trains_with_a_teacher_and_logs_its_spearman_per_epoch(project, tiny_model):
    """One run, as dvc repro runs it: teach scores the pairs with a tiny cross-encoder (tests/tiny.py,
    another experiment's model as a local folder), train distils them with margin_mse over query groups."""
    import csv
    import shutil

    from tests.conftest import run_stages_in_process
    from tests.tiny import set_params

    shutil.copytree(tiny_model("cross-encoder"), project / "teacher")
    before = (project / "models/finetuned/model.safetensors").read_bytes()
    set_params(project, {"teacher": {"name": "./teacher"}, "train": {"loss": "margin_mse", "list_size": 8, "epochs": 2}})
    printed = run_stages_in_process(project, ["teach", "train"])
    assert "train: train.loss=margin_mse: steps of 16 pairs at most, as whole groups of up to 8 titles" in printed["train"]
    assert (project / "models/finetuned/model.safetensors").read_bytes() != before
    with open(project / "results/train/plots/metrics/eval/teacher_spearman.tsv", newline="") as f:
        curve = [float(row["teacher_spearman"]) for row in csv.DictReader(f, delimiter="\t")]
    assert len(curve) == 2 and all(-1 <= value <= 1 for value in curve), "one per epoch"
    report = json.loads((project / "results/train/report.json").read_text())
    assert report["eval"]["teacher_spearman"] == curve[-1]
    assert 0 < report["eval"]["ndcg@10"] <= 1


def test_without_a_teacher_the_spearman_curve_has_no_points(reproduced_project):
    curve = reproduced_project / "results/train/plots/metrics/eval/teacher_spearman.tsv"
    assert curve.read_text() == "step\tteacher_spearman\n"
    assert "teacher_spearman" not in (reproduced_project / "results/train/report.json").read_text()
    assert "teacher" not in json.loads((reproduced_project / "results/eval/report.json").read_text())


def test_evaluate_reports_the_teachers_ranking_beside_the_models(project):
    """The teacher's validation scores ranked as the models' are: nDCG@10 in metrics.json, the rest
    in report.json."""
    import pandas as pd

    from stages.metrics import relevance_metrics, query_ids
    from tests.conftest import run_stages_in_process

    write_teacher_scores(project)
    run_stages_in_process(project, ["evaluate"])
    val = pd.read_csv(project / "data/split/val.csv")
    scores = np.load(project / "data/teacher/val.npy").astype(np.float64)
    expected = relevance_metrics(query_ids(val["query"]), val["label"].to_numpy(), 1 / (1 + np.exp(-scores)))
    report = json.loads((project / "results/eval/report.json").read_text())
    assert report["teacher"] == pytest.approx(expected)
    metrics = json.loads((project / "results/eval/metrics.json").read_text())
    assert metrics["teacher"] == {"ndcg@10": pytest.approx(expected["ndcg@10"])}
    assert metrics["fp32"]["ndcg@10"] == report["fp32"]["ndcg@10"]


def test_evaluate_refuses_teacher_scores_of_another_count_than_the_pairs_in_one_line(project):
    from tests.conftest import run_stages_in_process

    write_teacher_scores(project, val=np.zeros(3))
    with pytest.raises(SystemExit) as stopped:
        run_stages_in_process(project, ["evaluate"])
    assert str(stopped.value).startswith("error: teacher.name: data/teacher/val.npy holds 3 teacher scores for the ")
    assert "\n" not in str(stopped.value)


def test_teacher_scores_ride_with_each_pair_through_cached_features_and_token_batches():
    """train.freeze_base + cache_features: the teacher score comes with the cached features of its
    pair, kept from the model by the Trainer's column filter, a float32 batch tensor as the loss takes it."""
    from datasets import Dataset
    from transformers import default_data_collator

    from stages.frozen import feature_dataset
    from stages.ranking import QUERY_GROUP, TEACHER_SCORE, with_query_groups

    features, labels = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([1, 0, 0, 1])
    teacher = np.array([0.5, -1.25, 2.0, 3.5], dtype=np.float32)
    cached = with_query_groups(feature_dataset(features, labels), [0, 0, 1, 1], teacher)
    batch = default_data_collator([cached[i] for i in (2, 0, 3)])
    assert batch[TEACHER_SCORE].dtype == torch.float32 and batch[TEACHER_SCORE].tolist() == [2.0, 0.5, 3.5]
    assert batch[QUERY_GROUP].tolist() == [1, 0, 1] and batch["features"][0].tolist() == [6.0, 7.0, 8.0]
    tokens = with_query_groups(Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5], [6]]}), [0, 0, 1, 1], teacher)
    assert tokens[TEACHER_SCORE] == teacher.tolist()
