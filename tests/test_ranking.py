"""The ranking losses (stages/ranking.py) against sentence-transformers' own CrossEncoder losses on
the same tiny model, texts and labels: equal values and equal gradients; and the steps made of whole
query groups that they train on."""
import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.ranking import (LOSS_FUNCTIONS, check_loss_params, pack_steps, query_groups, relevance_scores)

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
