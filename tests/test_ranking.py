"""The ranking losses (stages/ranking.py) against sentence-transformers' own CrossEncoder losses on
the same tiny model, texts and labels: equal values and equal gradients; and the steps made of whole
query groups that they train on."""
import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.ranking import (LOSS_FUNCTIONS, check_loss_params, contributing, pack_steps, query_group_sampler, query_groups,
                            relevance_scores, steps_of_epoch)

# Three queries' lists, as sentence-transformers takes them: (query, [titles]), [labels]. The third
# has one label only (RankNet and LambdaLoss get no pair from it, ListNet still averages over it).
LISTS = [
    ("coronavirus vaccine trial", ["Vaccine trial results in patients", "Stock market investors during pandemic",
                                   "Antibody immunization study", "Football league transfer", "Masks and face coverings"],
     [1, 0, 1, 0, 0]),
    ("masks in covid", ["Face coverings of patients", "Telescope galaxy orbit", "Respirators study"], [1, 0, 1]),
    ("children and school", ["Baking flour kitchen", "Planets of the galaxy", "Market trading analysis", "Recipes"],
     [0, 0, 0, 0]),
]


@pytest.fixture(scope="module")
def cross_encoder(tiny_model):
    """sentence-transformers' CrossEncoder over the tiny MS MARCO-layout model (one relevance logit),
    built offline; in eval mode, so dropout does not tell the two paths apart."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_model("cross-encoder")), local_files_only=True, device="cpu")
    model.eval()
    return model


def peer_loss(name, model, mini_batch_size=None):
    from sentence_transformers.cross_encoder import losses

    peer = {"rank_net": losses.RankNetLoss, "list_net": losses.ListNetLoss, "lambda_loss": losses.LambdaLoss}[name]
    loss = peer(model, mini_batch_size=mini_batch_size)
    queries, titles, labels = zip(*LISTS)
    return loss([list(queries), [list(t) for t in titles]], [torch.tensor(y) for y in labels])


def our_loss(name, classifier, tokenizer):
    """The project's path: the pairs tokenized as encode does, the Hugging Face classifier's logits,
    a score per pair, the loss on (scores, labels, query groups)."""
    pairs = [(query, title, label, group) for group, (query, titles, labels) in enumerate(LISTS)
             for title, label in zip(titles, labels)]
    queries, titles, labels, groups = zip(*pairs)
    inputs = tokenizer(list(queries), list(titles), padding=True, return_tensors="pt")
    scores = relevance_scores(classifier(**inputs).logits)
    return LOSS_FUNCTIONS[name](scores, torch.tensor(labels), torch.tensor(groups))


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["rank_net", "list_net", "lambda_loss"])
def test_loss_and_gradients_equal_sentence_transformers(cross_encoder, name):
    """sentence-transformers with mini_batch_size -1 runs the whole step in one forward pass, as the
    Trainer runs ours: the same computation, so the gradients agree to float32 rounding (of each
    tensor's largest element: some sums run in another order)."""
    from transformers import AutoTokenizer

    classifier = cross_encoder[0].model  # the BertForSequenceClassification under the CrossEncoder
    tokenizer = AutoTokenizer.from_pretrained(classifier.name_or_path, local_files_only=True)
    classifier.zero_grad()
    theirs = peer_loss(name, cross_encoder, mini_batch_size=-1)
    theirs.backward()
    their_gradients = gradients(classifier)
    classifier.zero_grad()
    ours = our_loss(name, classifier, tokenizer)
    ours.backward()
    our_gradients = gradients(classifier)
    classifier.zero_grad()

    assert ours.item() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    assert our_gradients.keys() == their_gradients.keys() and len(our_gradients) > 10
    for key, gradient in our_gradients.items():
        largest = their_gradients[key].abs().max().item()
        assert largest > 0, key
        torch.testing.assert_close(gradient, their_gradients[key], rtol=1e-5, atol=1e-5 * largest)


def test_loss_equals_sentence_transformers_in_mini_batches(cross_encoder):
    """Its default mini_batch_size (None: as many pairs per forward pass as there are queries, 3
    here) and 2 only split the forward pass: the loss is the same."""
    from transformers import AutoTokenizer

    classifier = cross_encoder[0].model
    tokenizer = AutoTokenizer.from_pretrained(classifier.name_or_path, local_files_only=True)
    with torch.no_grad():
        for name in LOSS_FUNCTIONS:
            ours = our_loss(name, classifier, tokenizer)
            for mini_batch_size in (None, 2):
                torch.testing.assert_close(ours, peer_loss(name, cross_encoder, mini_batch_size), rtol=1e-5, atol=0)


def test_a_two_label_head_ranks_by_its_logit_difference(cross_encoder):
    """A 2-label head whose logit[1] - logit[0] is the 1-logit head's logit trains on the same loss."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    one_logit = cross_encoder[0].model
    config = one_logit.config.to_dict() | {"num_labels": 2, "id2label": {0: "irrelevant", 1: "relevant"},
                                            "label2id": {"irrelevant": 0, "relevant": 1}}
    two_labels = BertForSequenceClassification(type(one_logit.config).from_dict(config)).eval()
    state = one_logit.state_dict()
    with torch.no_grad():
        two_labels.bert.load_state_dict({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")})
        two_labels.classifier.weight.copy_(torch.cat([torch.zeros_like(state["classifier.weight"]), state["classifier.weight"]]))
        two_labels.classifier.bias.copy_(torch.cat([torch.tensor([0.5]), state["classifier.bias"] + 0.5]))
    tokenizer = AutoTokenizer.from_pretrained(one_logit.name_or_path, local_files_only=True)
    for name in LOSS_FUNCTIONS:
        with torch.no_grad():
            torch.testing.assert_close(our_loss(name, two_labels, tokenizer), peer_loss(name, cross_encoder), rtol=1e-5, atol=0)


def test_relevance_scores_of_each_head():
    logits = torch.tensor([[0.5, 2.0], [1.0, -1.0]])
    assert relevance_scores(logits).tolist() == [1.5, -2.0]
    assert relevance_scores(torch.tensor([[0.25], [-3.0]])).tolist() == [0.25, -3.0]


@pytest.mark.parametrize(("params", "message"), [
    ({"loss": "listnet"}, "train.loss=listnet: expected one of pointwise, rank_net, list_net, lambda_loss"),
    ({"loss": "margin_mse"}, "train.loss=margin_mse distils a teacher's scores and needs teacher.name"),
    ({"loss": "mse"}, "train.loss=mse distils a teacher's scores and needs teacher.name"),
    ({"loss": "rank_net", "list_size": 1}, "train.list_size=1: expected an integer of at least 2"),
    ({"loss": "rank_net", "list_size": True}, "train.list_size=True: expected an integer of at least 2"),
])
def test_bad_loss_params_are_refused_in_one_line(params, message):
    with pytest.raises(StageError, match=message) as refused:
        check_loss_params(params)
    assert "\n" not in str(refused.value)


def test_the_default_loss_is_pointwise():
    assert check_loss_params({}) == "pointwise"
    assert check_loss_params({"loss": "lambda_loss", "list_size": 2}) == "lambda_loss"


def judged_queries():
    """Row queries and labels: query 0 with 40 titles (10 relevant), 1 with 5 (1 relevant), 2 with one
    title, 3 with four titles all irrelevant, 4 with 3 relevant of 20; shuffled rows."""
    rng = np.random.default_rng(0)
    counts = {0: (40, 10), 1: (5, 1), 2: (1, 1), 3: (4, 0), 4: (20, 3)}
    rows = [(query, int(i < relevant)) for query, (titles, relevant) in counts.items() for i in range(titles)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    queries, labels = (np.array(column) for column in zip(*rows))
    return queries * 7919 + 11, labels  # query ids need not be dense


def test_queries_with_one_title_or_one_label_are_counted_and_left_out():
    queries, labels = judged_queries()
    usable, useless = contributing(queries, labels)
    assert useless == 2
    assert set(queries[usable]) == {11, 7919 + 11, 4 * 7919 + 11}
    grouped = [row for group in query_groups(queries, labels, 16, seed=1) for row in group]
    assert sorted(grouped) == sorted(np.flatnonzero(usable).tolist()), "every title of the others once"


def test_a_group_holds_titles_of_one_query_and_both_labels_wherever_the_query_has_enough():
    queries, labels = judged_queries()
    groups = query_groups(queries, labels, 16, seed=1)
    by_query = {}
    for group in groups:
        assert 2 <= len(group) <= 16 and len(set(queries[group])) == 1
        by_query.setdefault(queries[group[0]], []).append(group)
    assert sorted(len(g) for g in by_query[11]) == [13, 13, 14]  # 40 titles: 3 groups, 10 relevant split 4/3/3
    assert all(set(labels[g]) == {0, 1} for g in by_query[11])
    assert [set(labels[g]) for g in by_query[7919 + 11]] == [{0, 1}]
    # 20 titles, 2 groups, 3 relevant: both groups hold both labels
    assert all(set(labels[g]) == {0, 1} for g in by_query[4 * 7919 + 11])


def test_steps_hold_whole_groups_of_distinct_queries_and_at_most_batch_size_pairs():
    queries, labels = judged_queries()
    groups = query_groups(queries, labels, 6, seed=3)
    steps = pack_steps(groups, queries, 16, seed=3)
    assert sorted(row for step in steps for row in step) == sorted(row for group in groups for row in group)
    where = {row: i for i, step in enumerate(steps) for row in step}
    for group in groups:
        assert len({where[row] for row in group}) == 1, "a group is never split"
    for step in steps:
        assert len(step) <= 16
        queries_in_step = [queries[g[0]] for g in groups if g[0] in step]
        assert len(queries_in_step) == len(set(queries_in_step)), "one group per query per step"


def test_the_steps_change_with_the_epoch_and_repeat_for_the_same_seed_and_epoch():
    queries, labels = judged_queries()
    first = steps_of_epoch(queries, labels, 16, 8, seed=42, epoch=0)
    assert steps_of_epoch(queries, labels, 16, 8, seed=42, epoch=0) == first  # a resumed run sees the same
    assert steps_of_epoch(queries, labels, 16, 8, seed=42, epoch=1) != first
    assert steps_of_epoch(queries, labels, 16, 8, seed=7, epoch=0) != first


def test_with_lengths_a_group_holds_titles_of_similar_length():
    queries, labels = judged_queries()
    lengths = np.random.default_rng(5).integers(8, 120, len(queries))

    def spread(groups):
        return np.mean([np.ptp(lengths[group]) for group in groups])

    by_length = query_groups(queries, labels, 4, seed=1, lengths=lengths)
    assert spread(by_length) < spread(query_groups(queries, labels, 4, seed=1)) / 2
    assert all(set(labels[g]) == {0, 1} for g in by_length if queries[g[0]] == 11)


def test_each_process_gets_as_many_whole_steps_and_together_every_title():
    queries, labels = judged_queries()
    samplers = [query_group_sampler(queries, labels, 16, 8, seed=42, epochs=3, world_size=3, rank=rank)
                for rank in range(3)]
    assert len({len(sampler) for sampler in samplers}) == 1
    for epoch in range(3):
        steps = steps_of_epoch(queries, labels, 16, 8, seed=42, epoch=epoch)
        dealt = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            dealt.append(list(sampler))
            assert len(dealt[-1]) == len(sampler)
        assert all(step in steps for mine in dealt for step in mine), "whole steps"
        seen = {row for mine in dealt for step in mine for row in step}
        assert seen == {row for step in steps for row in step}


def test_a_ranking_loss_trains_through_the_train_stage_and_logs_its_ndcg_per_epoch(project):
    import csv
    import json

    from tests.conftest import run_stages_in_process
    from tests.tiny import set_params

    before = (project / "models/finetuned/model.safetensors").read_bytes()
    set_params(project, {"train": {"loss": "lambda_loss", "list_size": 8, "epochs": 2}})
    printed = run_stages_in_process(project, ["train"])["train"]
    assert "train: train.loss=lambda_loss: steps of 16 pairs at most, as whole groups of up to 8 titles of one query" in printed
    assert (project / "models/finetuned/model.safetensors").read_bytes() != before
    metrics = json.loads((project / "results/train/metrics.json").read_text())
    assert 0 < metrics["eval"]["ndcg@10"] <= 1
    with open(project / "results/train/plots/metrics/eval/ndcg@10.tsv", newline="") as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 2, "one nDCG@10 per epoch"


@pytest.mark.parametrize(("train", "message"), [
    ({"loss": "listwise"}, "error: train.loss=listwise: expected one of pointwise, rank_net, list_net, lambda_loss"),
    ({"loss": "margin_mse"}, "error: train.loss=margin_mse distils a teacher's scores and needs teacher.name"),
    ({"loss": "rank_net", "list_size": 1}, "error: train.list_size=1: expected an integer of at least 2"),
])
def test_bad_loss_params_stop_the_train_stage_in_one_line_before_it_writes(project, train, message):
    from tests.conftest import run_stages_in_process
    from tests.tiny import set_params

    outputs = ["models/finetuned", "models/checkpoints", "results/train"]
    before = {path: sorted((p.relative_to(project), p.stat().st_mtime_ns) for p in (project / path).rglob("*"))
              for path in outputs}
    set_params(project, {"train": train})
    with pytest.raises(SystemExit) as stopped:
        run_stages_in_process(project, ["train"])
    assert str(stopped.value).startswith(message) and "\n" not in str(stopped.value)
    assert before == {path: sorted((p.relative_to(project), p.stat().st_mtime_ns) for p in (project / path).rglob("*"))
                      for path in outputs}, "nothing written"


def test_a_ranking_loss_without_a_query_that_can_contribute_stops_in_one_line():
    from datasets import Dataset

    from stages.training import make_trainer

    pairs = Dataset.from_dict({"query": ["a", "a", "b", "c"], "title": ["x", "y", "z", "w"], "label": [1, 1, 0, 0]})
    with pytest.raises(StageError, match=r"^train.loss=rank_net: none of the 3 training queries has both relevant "
                                         r"and non-relevant titles"):
        make_trainer({"loss": "rank_net", "list_size": 16, "freeze_base": False, "cache_features": False},
                     None, None, None, pairs, None, None)
