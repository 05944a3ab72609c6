"""How the train stage trains: the Trainer's arguments from params.yaml, the Trainer itself
(tokenized pairs, or cached features for a frozen base), and resumable checkpoints. Shared by
stages/train.py and the benchmark, so both measure and run the same thing."""
import functools
import hashlib
import json
import os
import shutil

from stages.common import LABELS, ONE_LOGIT_LABELS, StageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
LABELS_FOR = {2: LABELS, 1: ONE_LOGIT_LABELS}  # train.num_labels -> the model's labels


def layer_overrides(pretrained_dir, num_layers):
    """The config overrides that keep the first `num_layers` encoder layers of the pretrained model
    (model.num_layers; None keeps them all): its num_hidden_layers, and the per-layer lists that must
    be as long (ModernBERT's layer_types, which its config checks against num_hidden_layers on
    load). Given to from_pretrained, the model is built with that many layers and loads the first
    ones' weights; its saved config, and so the export and everything after it, describe the cut model."""
    if num_layers is None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(pretrained_dir, local_files_only=True, trust_remote_code=False)
    count = config.num_hidden_layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= count:
        raise StageError(f"model.num_layers={num_layers}: the model has {count} layers; expected 1 to {count}, "
                         f"or null for all")
    overrides = {"num_hidden_layers": num_layers}
    for name in ("layer_types", "mlp_layer_types"):
        per_layer = getattr(config, name, None)
        if isinstance(per_layer, (list, tuple)):
            overrides[name] = list(per_layer[:num_layers])
    return overrides


def pretrained_classifier(pretrained_dir, params, num_layers=None):
    """The pretrained model with a train.num_labels head, cut to its first `num_layers` encoder
    layers (model.num_layers) when given; what the stage says about that head (new, the checkpoint's
    own, or the checkpoint's replaced for being of another size) and the layers kept; and a warning,
    or None, when a frozen base would keep encoder weights that were never trained (see never_trained)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    if params["num_labels"] not in LABELS_FOR:
        raise StageError(f"train.num_labels={params['num_labels']}: expected 2 (irrelevant/relevant, softmax) "
                         f"or 1 (one relevance logit, sigmoid)")
    labels = LABELS_FOR[params["num_labels"]]
    overrides = layer_overrides(pretrained_dir, num_layers)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report, summarised below
    # ignore_mismatched_sizes: a checkpoint's head of another size (a 1-logit cross-encoder's, say) is
    # replaced by a new one, and the stage says so. problem_type: two labels are single-label
    # classification (cross-entropy), whatever the checkpoint's config says; one logit gets its loss
    # from one_logit_loss.
    model, loading = AutoModelForSequenceClassification.from_pretrained(
        pretrained_dir, local_files_only=True, use_safetensors=True, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        **({"problem_type": "single_label_classification"} if len(labels) == 2 else {}),
        ignore_mismatched_sizes=True, output_loading_info=True, **overrides)
    transformers_logging.set_verbosity(verbosity)

    encoder_prefix = f"{model.base_model_prefix}."
    mismatched = sorted(key for key, *_ in loading["mismatched_keys"])
    encoder_mismatched = [key for key in mismatched if key.startswith(encoder_prefix)]
    if encoder_mismatched:
        raise StageError(f"{pretrained_dir}: the weights of {', '.join(encoder_mismatched)} do not have the shape "
                         f"its config.json gives them")
    new_in_head = [key for key in loading["missing_keys"] if not key.startswith(encoder_prefix)]
    head = f"{len(labels)}-label head (train.num_labels: {len(labels)})"
    if mismatched:
        note = f"train: the pretrained model's head ({', '.join(mismatched)}) has another size; replaced by a new {head}"
    elif new_in_head:
        note = f"train: a new {head}"
    else:
        note = f"train: fine-tuning the pretrained model's own {head}"
    if overrides:
        note += f"; the first {num_layers} encoder layers kept (model.num_layers: {num_layers})"
    untrained = never_trained(pretrained_dir, model, loading) if params["freeze_base"] else None
    warning = untrained and (f"train: warning: {untrained}, and train.freeze_base keeps it so: expect far weaker "
                             f"results than with train.freeze_base: false")
    return model, note, warning


def never_trained(pretrained_dir, model, loading):
    """Why part of the encoder was never trained, or None: weights missing from the checkpoint (newly
    initialized), or the pooler of a sentence-transformers export, which was trained through its own
    pooling (modules.json) and carries the pooler of the model it started from as it was."""
    from pathlib import Path

    prefix = f"{model.base_model_prefix}."
    missing = sorted({key.rsplit(".", 1)[0] for key in loading["missing_keys"] if key.startswith(prefix)})
    if missing:
        return f"the pretrained model has no weights for {', '.join(missing)} (newly initialized)"
    modules = Path(pretrained_dir) / "modules.json"
    pooled_by_sentence_transformers = modules.is_file() and any(
        module.get("type") == "sentence_transformers.models.Pooling" for module in json.loads(modules.read_text()))
    if pooled_by_sentence_transformers and getattr(model.base_model, "pooler", None) is not None:
        return (f"the pretrained model is a sentence-transformers export (modules.json), trained through its own "
                f"pooling, never through {prefix}pooler, which the head reads")
    return None


def device_flags(precision):
    """TrainingArguments flags for train.precision and the device: `auto` is bf16 on GPUs that compute
    in it natively (compute capability 8.0, Ampere, and newer), fp16 on older GPUs, fp32 on CPU.

    Not torch.cuda.is_bf16_supported(): it is True on GPUs that only emulate bf16 (T4, V100), slowly.
    """
    import torch

    if precision not in PRECISIONS:
        raise StageError(f"train.precision={precision}: expected one of {', '.join(PRECISIONS)}")
    gpu = torch.cuda.is_available()
    ampere_or_newer = gpu and torch.cuda.get_device_capability() >= (8, 0)
    if precision == "auto":
        precision = "fp32" if not gpu else "bf16" if ampere_or_newer else "fp16"
    if precision != "fp32" and not gpu:
        raise StageError(f"train.precision={precision}: mixed precision needs a GPU; use auto or fp32 on CPU")
    # TF32 matmuls on Ampere and newer: a large speed-up for a negligible precision change.
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "tf32": ampere_or_newer or None,
            "dataloader_pin_memory": gpu}


def compute_metrics(eval_pred, queries=None, teacher=None):
    """Per-epoch validation metrics: accuracy and F1 at the argmax, and, given each pair's query (its
    hash, as evaluate keeps it), evaluate's ranking metrics (nDCG@10, ...) of the PyTorch model's
    P(relevant) per query, the same function on the same grouping as evaluate's fp32 ones; given each
    pair's teacher score, teacher_spearman, the Spearman correlation of the model's scores with the
    teacher's. Undefined ones (no query with a relevant title, constant scores) are left out: the
    Trainer logs numbers only."""
    from sklearn.metrics import accuracy_score, f1_score

    from scorer import relevance_probability
    from stages.metrics import ranking_metrics

    logits, labels = eval_pred
    predictions = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(axis=-1)
    metrics = {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions, zero_division=0.0)}
    if queries is not None:
        one_logit = logits.shape[1] == 1
        scores = relevance_probability(logits.astype("float64"), {"labels": list(LABELS_FOR[logits.shape[1]]),
                                                                  "probability": "sigmoid" if one_logit else "softmax"})
        ranking = ranking_metrics(queries, labels, scores)
        metrics.update({name: value for name, value in ranking.items() if value is not None})
    if teacher is not None:
        metrics.update(teacher_agreement(logits, teacher))
    return metrics


def teacher_agreement(logits, teacher):
    """{"teacher_spearman": the Spearman correlation of the model's scores (the relevance logit, or
    logit[1] - logit[0]: what P(relevant) orders by) with the teacher's}, or {} where it is undefined."""
    import warnings

    import numpy as np
    from scipy.stats import spearmanr

    from stages.metrics import defined

    from stages.ranking import relevance_scores

    scores = relevance_scores(np.asarray(logits, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: NaN, left out
        correlation = defined(spearmanr(scores, np.asarray(teacher, dtype=np.float64)).statistic)
    return {} if correlation is None else {"teacher_spearman": correlation}


def teacher_scores(teacher_dir, train_set, val_set):
    """The teacher's scores of the training and validation pairs (data/teacher/{train,val}.npy, the
    teach stage's, one per row of data/split's CSVs and so of data/encoded's datasets, in order), or
    None when teacher_dir holds none (teacher.name: null). Each must hold one score per pair of its
    dataset, else one line: scores of other pairs would teach the student the wrong ones."""
    import numpy as np

    if teacher_dir is None:
        return None
    paths = {split: teacher_dir / f"{split}.npy" for split in ("train", "val")}
    present = [path for path in paths.values() if path.is_file()]
    if not present:
        return None
    if len(present) < len(paths):
        raise StageError(f"teacher.name: {teacher_dir} holds {present[0].name} without "
                         f"{next(p.name for p in paths.values() if not p.is_file())}; rerun teach (dvc repro teach)")
    scores = {}
    for (split, path), dataset in zip(paths.items(), (train_set, val_set)):
        scores[split] = np.load(path, mmap_mode="r")
        if scores[split].shape != (len(dataset),):
            raise StageError(f"teacher.name: {path} holds {scores[split].size} teacher scores for the {len(dataset)} "
                             f"{split} pairs, one per pair in order expected: teach and encode read another data/split; "
                             f"rerun them (dvc repro)")
    return scores["train"], scores["val"]


def query_hashes(dataset, batch_size=10_000):
    """Each pair's query id (stages.metrics.query_ids, evaluate's grouping), read from the dataset's
    query column a batch at a time."""
    import numpy as np
    import pandas as pd

    from stages.metrics import query_ids

    hashes = [query_ids(pd.Series(batch["query"], dtype=object))
              for batch in dataset.select_columns(["query"]).iter(batch_size=batch_size)]
    return np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)


def one_logit_loss(outputs, labels, num_items_in_batch=None):
    """Binary cross-entropy on a one-logit model's relevance logit (train.num_labels: 1), as MS MARCO
    cross-encoders are trained; transformers would treat one label as regression (mean squared error)."""
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        outputs.logits.squeeze(-1).float(), labels.float(), reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else len(labels))


def training_arguments(params, output_dir):
    import torch
    from transformers import TrainingArguments
    from transformers.training_args import ParallelMode

    cached = params["freeze_base"] and params["cache_features"]
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["eval_batch_size"],
        learning_rate=params["learning_rate"],
        warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"],
        seed=params["seed"],
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="epoch" if params["resume"] else "no",
        save_total_limit=1,
        # Batches of similar lengths (dynamic padding then pads little); only for token inputs.
        train_sampling_strategy="group_by_length" if params["group_by_length"] and not cached else "random",
        report_to="none",  # dvclive is attached by the caller, on rank 0 only, with dvc.yaml left alone
        # One label per pair, so nothing to weigh by token counts; left on, transformers 5.24 multiplies
        # the logged validation loss by the number of processes (seen under torchrun: 1.38 for 0.69).
        average_tokens_across_devices=False,
        # Every trainable parameter takes part in every step (the head, or the whole model), so DDP
        # need not search the autograd graph for unused ones; transformers turns the search on.
        ddp_find_unused_parameters=False,
        # Several processes without a GPU (torchrun on CPU): DDP over gloo, NCCL's CPU counterpart.
        **({"use_cpu": True, "ddp_backend": "gloo"} if cpu_processes else {}),
        **device_flags(params["precision"]),
    )
    if args.parallel_mode == ParallelMode.NOT_DISTRIBUTED and args.n_gpu > 1:
        # One process that sees several GPUs: the Trainer would wrap the model in DataParallel over
        # all of them, so the batch and the result would depend on the host. train.gpus: N > 1
        # runs N processes under torchrun instead; one process uses one GPU.
        args._n_gpu = 1
    return args


def make_trainer(params, training_args, model, tokenizer, train_set, val_set, features_dir, callbacks=(), teacher=None):
    """The Trainer this stage trains with, and the validation inputs it evaluates on: tokenized pairs
    padded per batch, or, for a frozen base with cache_features, what the encoder gives the head,
    computed once into features_dir by the first process of each machine. `teacher`: the teacher's
    (training, validation) scores (teacher_scores), for a teacher loss and eval's teacher_spearman."""
    import numpy as np
    from transformers import DataCollatorWithPadding, Trainer, default_data_collator

    from stages.frozen import cacheable, classification_head, feature_dataset, head_inputs, labels_of
    from stages.ranking import GROUPED_LOSSES, NEEDS, check_loss_params, contributing

    loss = check_loss_params(params, teacher is not None)
    if loss in GROUPED_LOSSES:  # refused before the frozen encoder's pass when no query can contribute
        train_queries, train_labels = query_hashes(train_set), labels_of(train_set)
        usable, useless = contributing(train_queries, train_labels, NEEDS[loss])
        if not usable.any():
            lacking = ("two titles or more, so margin_mse has no pair of titles to learn a margin from"
                       if loss == "margin_mse" else
                       "both relevant and non-relevant titles, so a ranking loss has nothing to learn")
            raise StageError(f"train.loss={loss}: none of the {useless} training queries has {lacking}; "
                             f"use train.loss: pointwise")
    cached = params["freeze_base"] and params["cache_features"]
    if cached and not cacheable(model):
        cached = False
        if params["group_by_length"]:  # training_arguments left it off, expecting cached features
            training_args.train_sampling_strategy = "group_by_length"
        if training_args.process_index == 0:
            print(f"train: train.cache_features: no cached-feature recipe for {model.config.model_type} models "
                  f"({type(model).__name__}); the frozen base runs on every batch")
    if cached:
        batch_size, device = params["eval_batch_size"], training_args.device
        trained, collator = classification_head(model), default_data_collator  # stacks the features
        features_dir.mkdir(parents=True, exist_ok=True)

        def features(name, dataset):
            path = features_dir / f"{name}.npy"
            if training_args.local_process_index == 0:
                return head_inputs(model, dataset, tokenizer, batch_size, device, path)
            return np.load(path, mmap_mode="r")

        with training_args.main_process_first(local=True, desc="encoding the pairs once"):
            train_features, val_features = features("train", train_set), features("val", val_set)
        train_inputs = feature_dataset(train_features, labels_of(train_set))
        val_inputs = feature_dataset(val_features, labels_of(val_set))
    else:
        trained, collator, train_inputs, val_inputs = model, DataCollatorWithPadding(tokenizer), train_set, val_set
    val_queries = query_hashes(val_set)
    if loss in GROUPED_LOSSES:
        trainer, val_inputs = ranking_trainer(params, loss, training_args, trained, tokenizer, collator, train_set,
                                              train_inputs, val_queries, val_inputs, train_queries, train_labels,
                                              useless, callbacks, teacher)
    else:
        trainer = Trainer(model=trained, args=training_args, train_dataset=train_inputs, eval_dataset=val_inputs,
                          processing_class=tokenizer, data_collator=collator,
                          compute_loss_func=one_logit_loss if model.config.num_labels == 1 else None,
                          callbacks=list(callbacks))
    # The predictions come in the eval sampler's order: with train_sampling_strategy group_by_length,
    # transformers 5.24 groups the validation pairs by length too (a seeded, so fixed, permutation).
    # The teacher's validation scores, one per pair of val_set in order, take the same permutation.
    queries, val_teacher = val_queries, None if teacher is None else np.asarray(teacher[1])
    order = trainer._get_eval_sampler(val_inputs)
    if order is not None:
        order = np.fromiter(iter(order), dtype=np.int64)
        queries, val_teacher = queries[order], None if val_teacher is None else val_teacher[order]
    trainer.compute_metrics = functools.partial(compute_metrics, queries=queries, teacher=val_teacher)
    return trainer, val_inputs


def ranking_trainer(params, loss, training_args, trained, tokenizer, collator, train_set, train_inputs, val_queries,
                    val_inputs, train_queries, train_labels, useless, callbacks, teacher=None):
    """make_trainer's Trainer for a ranking or teacher loss (stages/ranking.py), on steps of whole query
    groups (by length within a query with group_by_length, for token inputs), and its validation
    inputs, both carrying each pair's query group, and for a teacher loss its teacher score."""
    import numpy as np

    from stages.ranking import TEACHER_LOSSES, pair_lengths, ranking_trainer as query_group_trainer, with_query_groups

    list_size, batch_size = params.get("list_size", 16), training_args.train_batch_size
    lengths = pair_lengths(train_set) if training_args.train_sampling_strategy == "group_by_length" else None
    train_teacher, val_teacher = teacher if loss in TEACHER_LOSSES else (None, None)
    train_inputs = with_query_groups(train_inputs, np.unique(train_queries, return_inverse=True)[1], train_teacher)
    val_inputs = with_query_groups(val_inputs, np.unique(val_queries, return_inverse=True)[1], val_teacher)
    if training_args.process_index == 0:
        lacking = "one title only" if loss == "margin_mse" else "one title or one label only"
        left_out = (f"; {useless} quer{'y' if useless == 1 else 'ies'} with {lacking} "
                    f"give{'s' if useless == 1 else ''} it nothing and {'is' if useless == 1 else 'are'} left out"
                    if useless else "")
        cut = f" (train.list_size: {list_size}, cut to train.batch_size)" if list_size > batch_size else ""
        print(f"train: train.loss={loss}: steps of {batch_size} pairs at most, as whole groups of up to "
              f"{min(list_size, batch_size)} titles of one query{cut}{left_out}")
    trainer = query_group_trainer(loss, train_queries, train_labels, list_size, lengths, model=trained,
                                  args=training_args, train_dataset=train_inputs, eval_dataset=val_inputs,
                                  processing_class=tokenizer, data_collator=collator, callbacks=list(callbacks))
    return trainer, val_inputs


def run_fingerprint(params, data_files):
    """What a checkpoint must match to be resumed: the train params and the bytes of its inputs."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in sorted(data_files):
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def checkpoint_to_resume(checkpoints, fingerprint, main_process):
    """The last checkpoint of an interrupted run with the same fingerprint, else None; the main
    process then clears what a different run left behind."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = checkpoints / "run.json"
    if stamp.exists() and json.loads(stamp.read_text())["fingerprint"] == fingerprint:
        last = get_last_checkpoint(str(checkpoints))
        if last:
            return last
    if not main_process:
        return None
    empty_checkpoints(checkpoints)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}))
    return None


def empty_checkpoints(checkpoints):
    """Leave the checkpoints folder empty but present: DVC requires a declared output to exist."""
    shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True)
