"""Ranking losses over whole queries (train.loss: rank_net, list_net, lambda_loss), and the steps
made of query groups that they train on.

The losses are sentence-transformers' cross-encoder losses (RankNetLoss, ListNetLoss, LambdaLoss
with its default NDCG-Loss2++ weighting, all at their default arguments), written on tensors: a
step's scores, its labels and each pair's query group, instead of a CrossEncoder and raw texts.
Each is built as sentence-transformers builds it: the groups become the rows of a matrix padded
with scores of -1e16 and labels of -inf, and it is reduced as there: ListNet is the mean over the
groups of the softmax cross-entropy between the labels and the scores; LambdaLoss and RankNet the
mean, over every pair of titles of one group whose labels differ, of the weighted log-sigmoid of
their score difference, in bits. A group with one title or one label gives RankNet and LambdaLoss
no pair. sentence-transformers' mini_batch_size only splits the model's forward pass into chunks;
the loss sees the whole step's scores at once, as here. tests/test_ranking.py checks values and
gradients against sentence-transformers' classes.

A pair's score is what evaluate, the scorer and Vespa rank by: the relevance logit of a 1-logit
head, or logit[1] - logit[0] of a 2-label head (the log-odds its softmax gives P(relevant) from).

The distillation losses (train.loss: margin_mse, mse) learn a teacher's scores of the same pairs
(data/teacher, the teach stage's), on the same steps of query groups, with labels unused:
sentence-transformers' MSELoss (the mean over the step's pairs of (score - teacher score)^2) and
MarginMSELoss (Hofstatter et al.), which sentence-transformers defines on (query, title one, title
two) triplets: the mean over the triplets of ((score one - score two) - (teacher one - teacher two))^2.
margin_mse takes every pair of two titles of one group as such a triplet, each unordered pair once
(the squared difference is the same either way round): it equals sentence-transformers'
MarginMSELoss given those triplets with the teacher's margins as labels (tests/test_ranking.py).
A group with one title gives it no pair.
"""
import math

import numpy as np

from stages.common import StageError

POINTWISE = "pointwise"
RANKING_LOSSES = ("rank_net", "list_net", "lambda_loss")
TEACHER_LOSSES = ("margin_mse", "mse")  # distillation: they learn data/teacher's scores
GROUPED_LOSSES = (*RANKING_LOSSES, *TEACHER_LOSSES)  # trained on steps of whole query groups
LOSSES = (POINTWISE, *GROUPED_LOSSES)
# What a query needs to give a loss anything: the fewest titles, and whether both labels. A ranking
# loss learns from titles whose labels differ; margin_mse from any two titles' teacher margin; mse
# from any title's teacher score.
NEEDS = {**{loss: (2, True) for loss in RANKING_LOSSES}, "margin_mse": (2, False), "mse": (1, False)}
PADDED_SCORE = -1e16  # sentence-transformers' padding of the score matrix


def check_loss_params(params, teacher=False):
    """Refuse, in one line, a train.loss or train.list_size the train stage cannot train with
    (stages.common.PARAMS checks their types; this says why a teacher loss is refused): a teacher
    loss needs the teacher's scores (`teacher`: data/teacher holds them)."""
    loss, list_size = params.get("loss", POINTWISE), params.get("list_size", 16)
    if loss in TEACHER_LOSSES and not teacher:
        raise StageError(f"train.loss={loss} distils a teacher's scores and needs teacher.name, the teacher model: "
                         f"data/teacher holds no scores (teacher.name: null); set teacher.name to a cross-encoder "
                         f"(docs/models.md), or use one of {', '.join((POINTWISE, *RANKING_LOSSES))}")
    if loss not in LOSSES:
        raise StageError(f"train.loss={loss}: expected one of {', '.join(LOSSES)}")
    if isinstance(list_size, bool) or not isinstance(list_size, int) or list_size < 2:
        raise StageError(f"train.list_size={list_size}: expected an integer of at least 2 (titles of one query "
                         f"per group)")
    return loss


def relevance_scores(logits):
    """Each pair's ranking score from a (pairs x labels) array of logits, torch or NumPy: the relevance
    logit of a 1-logit head, logit[1] - logit[0] of a 2-label head. Train's losses and its Spearman
    with the teacher, and teach's scores of the teacher, all rank by it."""
    return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]


def padded_groups(scores, labels, groups):
    """sentence-transformers' (groups x longest group) score and label matrices: one row per query
    group (in the order of the group ids), its titles in their order in the step, the rest padded
    with a score of -1e16 and a label of -inf."""
    import torch

    _, row, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.argsort(row, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.empty_like(row)
    column[order] = torch.arange(len(row), device=row.device) - starts[row[order]]
    shape = (len(counts), int(counts.max()))
    score_matrix = torch.full(shape, PADDED_SCORE, device=scores.device)
    score_matrix[row, column] = scores.float()
    label_matrix = torch.full_like(score_matrix, float("-inf"))
    label_matrix[row, column] = labels.float()
    return score_matrix, label_matrix


def list_net(scores, labels, groups):
    """ListNet: the mean over the groups of the cross-entropy between the softmax of the labels and
    that of the scores (sentence-transformers' ListNetLoss)."""
    import torch

    score_matrix, label_matrix = padded_groups(scores, labels, groups)
    return torch.nn.functional.cross_entropy(score_matrix, label_matrix.softmax(dim=1))


def rank_net(scores, labels, groups):
    """RankNet: the mean over every pair (i, j) of one group with label i > label j of
    -log2 sigmoid(score i - score j) (sentence-transformers' RankNetLoss: LambdaLoss unweighted)."""
    return lambda_loss(scores, labels, groups, weighted=False)


def lambda_loss(scores, labels, groups, weighted=True, mu=10.0, eps=1e-10):
    """LambdaLoss with the NDCG-Loss2++ weighting (mu * NDCG-Loss2 + LambdaRank), over every pair of
    one group whose labels differ, k unset, sigma 1, in bits (sentence-transformers' LambdaLoss at its
    defaults); weighted=False is RankNet."""
    import torch

    score_matrix, label_matrix = padded_groups(scores, labels, groups)
    max_docs = score_matrix.shape[1]
    scores_sorted, indices_pred = score_matrix.sort(descending=True, dim=-1)
    labels_sorted, _ = label_matrix.sort(descending=True, dim=-1)
    true_sorted_by_preds = torch.gather(label_matrix, dim=1, index=indices_pred)
    true_diffs = true_sorted_by_preds[:, :, None] - true_sorted_by_preds[:, None, :]
    pairs = torch.isfinite(true_diffs) & (true_diffs > 0)  # k unset: every pair is within the top k

    true_sorted_by_preds = true_sorted_by_preds.clamp(min=0.0)
    labels_sorted = labels_sorted.clamp(min=0.0)
    positions = torch.arange(1, max_docs + 1, device=score_matrix.device)
    discount = torch.log2(1.0 + positions.float())[None, :]
    max_dcgs = torch.sum((torch.pow(2, labels_sorted) - 1) / discount, dim=-1).clamp(min=eps)
    gain = (torch.pow(2, true_sorted_by_preds) - 1) / max_dcgs[:, None]
    if weighted:
        # NDCG-Loss2: |1/D(|i-j|) - 1/D(|i-j|+1)| x |G_i - G_j|, positions by the predicted order
        delta = torch.abs(positions[:, None] - positions[None, :])
        deltas = torch.abs(torch.pow(torch.abs(discount[0, delta - 1]), -1.0)
                           - torch.pow(torch.abs(discount[0, delta]), -1.0))
        deltas.diagonal().zero_()
        gain_gaps = torch.abs(gain[:, :, None] - gain[:, None, :])
        ndcg_loss2 = deltas[None, :, :] * gain_gaps
        # LambdaRank: |1/D(i) - 1/D(j)| x |G_i - G_j|
        lambda_rank = torch.abs(torch.pow(discount[:, :, None], -1.0) - torch.pow(discount[:, None, :], -1.0)) * gain_gaps
        weights = mu * ndcg_loss2 + lambda_rank
    else:
        weights = torch.tensor(1.0, device=score_matrix.device)

    score_diffs = (scores_sorted[:, :, None] - scores_sorted[:, None, :]).clamp(min=-1e8, max=1e8)
    score_diffs = score_diffs.masked_fill(torch.isnan(score_diffs), 0.0)
    losses = weights * torch.nn.functional.logsigmoid(score_diffs) / math.log(2)
    kept = losses[pairs]
    return -kept.sum() / max(kept.numel(), 1)


LOSS_FUNCTIONS = {"rank_net": rank_net, "list_net": list_net, "lambda_loss": lambda_loss}


def margin_mse(scores, teacher, groups):
    """Margin-MSE: the mean, over every pair (i, j), i before j, of two titles of one group, of
    ((score i - score j) - (teacher i - teacher j))^2 (sentence-transformers' MarginMSELoss over those
    (query, title i, title j) triplets); 0 for a step without such a pair."""
    import torch

    scores, teacher = scores.float(), teacher.float()
    pairs = torch.triu(groups[:, None] == groups[None, :], diagonal=1)
    margins = scores[:, None] - scores[None, :]
    teacher_margins = teacher[:, None] - teacher[None, :]
    errors = (margins - teacher_margins)[pairs] ** 2
    return errors.sum() / max(errors.numel(), 1)


def mse(scores, teacher, groups=None):
    """The mean over the pairs of (score - teacher score)^2 (sentence-transformers' MSELoss)."""
    import torch

    return torch.nn.functional.mse_loss(scores.float(), teacher.float())


TEACHER_LOSS_FUNCTIONS = {"margin_mse": margin_mse, "mse": mse}  # (scores, teacher scores, groups)


def query_groups(queries, labels, list_size, seed, epoch=0, lengths=None, needs=(2, True)):
    """One epoch's groups: lists of row numbers, each of up to `list_size` titles of one query.

    A query's titles are dealt into ceil(titles / list_size) groups of near-equal size, its relevant
    and its non-relevant titles each split evenly between them, so every group holds both kinds
    wherever the query has enough of each (a query with fewer relevant titles than groups leaves some
    groups with one kind). The titles are shuffled by (seed, epoch) first; given `lengths` (tokens of
    each pair), each kind is then ordered by length, so a group holds titles of similar length. Queries
    that give the loss nothing are left out: `needs` (NEEDS[loss]), the fewest titles and whether both
    labels; for a ranking loss, those with one title or one label only. Returns the groups, in the
    queries' order (shuffle them with pack_steps)."""
    rng = np.random.default_rng([seed, epoch])
    queries, labels = np.asarray(queries), np.asarray(labels)
    fewest_titles, both_labels = needs
    order = np.lexsort((labels, queries))  # by query, then label
    groups = []
    starts = np.flatnonzero(np.r_[True, queries[order][1:] != queries[order][:-1]])
    for rows in np.split(order, starts[1:]):
        if len(rows) < fewest_titles or (both_labels and labels[rows].min() == labels[rows].max()):
            continue
        count = -(-len(rows) // list_size)
        parts = [[] for _ in range(count)]
        for label in np.unique(labels[rows]):
            kind = rng.permutation(rows[labels[rows] == label])
            if lengths is not None:
                kind = kind[np.argsort(np.asarray(lengths)[kind], kind="stable")]
            # near-equal contiguous chunks, the larger ones dealt to the groups that have fewest titles
            sizes = np.full(count, len(kind) // count)
            sizes[np.argsort([len(part) for part in parts], kind="stable")[:len(kind) % count]] += 1
            for part, chunk in zip(parts, np.split(kind, np.cumsum(sizes)[:-1])):
                part.extend(chunk.tolist())
        groups.extend(part for part in parts if part)
    return groups


def pack_steps(groups, queries, batch_size, seed, epoch=0, lengths=None, window=50):
    """The groups, shuffled by (seed, epoch), packed whole into steps of at most `batch_size` pairs,
    never two groups of one query in a step (the loss groups a step's pairs by query), best fit: each
    group into the open step it fills most. Given `lengths`, the groups of each window of `window`
    steps' worth are packed longest first, so a step holds pairs of similar length (the Trainer's
    group_by_length, for whole groups). The steps are then shuffled. Returns lists of row numbers."""
    rng = np.random.default_rng([seed, epoch, 1])
    groups = [groups[i] for i in rng.permutation(len(groups))]
    queries = np.asarray(queries)
    steps = []
    if lengths is not None:
        lengths = np.asarray(lengths)
        size = max(1, window * batch_size)
        windows, current, filled = [], [], 0
        for group in groups:
            current.append(group)
            filled += len(group)
            if filled >= size:
                windows.append(current)
                current, filled = [], 0
        windows.append(current)
        windows = [sorted(w, key=lambda group: -int(lengths[group].max())) for w in windows]
    else:
        windows = [groups]
    for groups_in_window in windows:
        by_room = [[] for _ in range(batch_size + 1)]  # open steps by the pairs they still take
        for group in groups_in_window:
            query, need = queries[group[0]], len(group)
            found = next(((room, step) for room in range(need, batch_size) for step in by_room[room]
                          if query not in step[1]), None)
            if found:
                room, step = found
                by_room[room].remove(step)
            else:
                room, step = batch_size, ([], set())
            step[0].extend(group)
            step[1].add(query)
            if room == need:
                steps.append(step[0])
            else:
                by_room[room - need].append(step)
        steps.extend(step[0] for room in range(1, batch_size) for step in by_room[room])
    return [steps[i] for i in rng.permutation(len(steps))]


def contributing(queries, labels, needs=(2, True)):
    """Which rows belong to a query that a loss can learn from, and how many queries cannot: `needs`
    (NEEDS[loss]) is the fewest titles and whether both labels; for a ranking loss, two titles or
    more with both labels."""
    queries, labels = np.asarray(queries), np.asarray(labels)
    fewest_titles, both_labels = needs
    _, query_index = np.unique(queries, return_inverse=True)
    low = np.full(query_index.max() + 1 if len(queries) else 0, np.inf)
    high = np.full_like(low, -np.inf)
    np.minimum.at(low, query_index, labels)
    np.maximum.at(high, query_index, labels)
    usable = np.bincount(query_index, minlength=len(low)) >= fewest_titles
    if both_labels:
        usable &= low < high
    return usable[query_index], int((~usable).sum())


def steps_of_epoch(queries, labels, batch_size, list_size, seed, epoch, lengths=None, needs=(2, True)):
    """One epoch's steps, row numbers of whole query groups (query_groups, then pack_steps)."""
    groups = query_groups(queries, labels, min(list_size, batch_size), seed, epoch, lengths, needs)
    return pack_steps(groups, queries, batch_size, seed, epoch, lengths)


def query_group_sampler(queries, labels, batch_size, list_size, seed, epochs, lengths=None, world_size=1, rank=0,
                        needs=(2, True)):
    """The Trainer's batch sampler for a ranking loss: each epoch's steps (steps_of_epoch, by seed
    and epoch, so a resumed run sees the same ones), every process's share of whole steps.

    A subclass of transformers' BatchRebalanceSampler, the Trainer's rank-aware batch sampler: the
    Trainer hands it to the DataLoader as its batch_sampler and leaves its sharding to it (accelerate
    would otherwise deal the steps out again). The Trainer counts an epoch's steps once, so every
    epoch yields as many per process: the most any of the `epochs` epochs packs, rounded up to a
    multiple of the processes, an epoch with fewer repeating its first steps (as torch's
    DistributedSampler pads), one or two in practice."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    class QueryGroupSampler(BatchRebalanceSampler):
        def __init__(self):  # BatchRebalanceSampler's arguments describe its own packing, not this one
            self.epoch = 0
            self.drop_last = False
            self.per_process = max(-(-len(self.steps(epoch)) // world_size) for epoch in range(max(1, math.ceil(epochs))))

        def steps(self, epoch):
            return steps_of_epoch(queries, labels, batch_size, list_size, seed, epoch, lengths, needs)

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return self.per_process

        def __iter__(self):
            steps = self.steps(self.epoch)
            steps = (steps * -(-self.per_process * world_size // len(steps)))[:self.per_process * world_size]
            yield from steps[rank::world_size]

    return QueryGroupSampler()


QUERY_GROUP = "query_group"  # the column (and batch key) of each pair's query, a dense number
TEACHER_SCORE = "teacher_score"  # the column (and batch key) of each pair's teacher score, for a teacher loss


def ranking_trainer(loss, queries, labels, list_size, lengths=None, **trainer_kwargs):
    """A transformers Trainer that trains on a ranking or teacher loss (`loss`, a key of LOSS_FUNCTIONS
    or TEACHER_LOSS_FUNCTIONS) over steps of whole query groups (query_group_sampler over the training
    rows' `queries` and `labels`). Its datasets carry each pair's query as a QUERY_GROUP number, and for
    a teacher loss its teacher score as TEACHER_SCORE, which it keeps from the model: the loss groups
    a step's scores by the first (a step never holds two groups of one query) and learns the second.
    The validation loss is the same loss over each validation batch's pairs, grouped by query as they come."""
    from transformers import Trainer

    distils = loss in TEACHER_LOSSES
    loss_function = (TEACHER_LOSS_FUNCTIONS if distils else LOSS_FUNCTIONS)[loss]
    kept_columns = (QUERY_GROUP, TEACHER_SCORE) if distils else (QUERY_GROUP,)

    class QueryGroupTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a mean over the step: the Trainer divides by the accumulation steps

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            for column in kept_columns:  # kept in the batches, for compute_loss
                if column not in self._signature_columns:
                    self._signature_columns.append(column)

        def _get_train_sampler(self, train_dataset=None):
            args = self.args
            return query_group_sampler(queries, labels, args.train_batch_size, list_size, args.seed,
                                       args.num_train_epochs, lengths, args.world_size, args.process_index,
                                       NEEDS[loss])

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, groups = inputs.pop("labels"), inputs.pop(QUERY_GROUP)
            targets = inputs.pop(TEACHER_SCORE) if distils else labels
            outputs = model(**inputs)
            loss = loss_function(relevance_scores(outputs.logits), targets, groups)
            return (loss, outputs) if return_outputs else loss

    return QueryGroupTrainer(**trainer_kwargs)


def with_query_groups(dataset, groups, teacher_scores=None):
    """`dataset` (a datasets.Dataset of tokenized pairs, or a torch Dataset of dicts: cached features)
    with each row's query group number under QUERY_GROUP, and given `teacher_scores` (one per row, in
    order) each row's under TEACHER_SCORE."""
    import torch

    columns = {QUERY_GROUP: np.asarray(groups, dtype=np.int64)}
    if teacher_scores is not None:
        columns[TEACHER_SCORE] = np.asarray(teacher_scores, dtype=np.float32)
    if hasattr(dataset, "add_column"):
        for name, values in columns.items():
            dataset = dataset.add_column(name, values)
        return dataset

    class WithQueryGroups(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            return {**dataset[index], **{name: values[index].item() for name, values in columns.items()}}

    return WithQueryGroups()


def pair_lengths(dataset, column="input_ids", batch_size=10_000):
    """Tokens of each pair of a tokenized datasets.Dataset, read a batch at a time from Arrow."""
    import pyarrow.compute as pc

    lengths = [pc.list_value_length(batch[column]).to_numpy()
               for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=batch_size)]
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
