"""Train only the classification head of a frozen encoder on features computed once.

With train.freeze_base the encoder never changes, so running it on every batch of every epoch,
as the reference recipe does, repeats the same work. Here the encoder runs once per pair, in
eval mode (its dropout off: the one difference from the reference, whose frozen encoder still
runs in training mode), and the Trainer then trains the model's own head on what the encoder
gave it. The head is every module of the model outside the encoder (`model.base_model`), shared
with the model, so the saved model is complete.

Each architecture feeds its head differently; RECIPES follows each *ForSequenceClassification's
forward in transformers. An architecture not listed is trained uncached (train.py says so).
"""
import numpy as np

from stages.common import model_inputs


def first_token(output, attention_mask, config):
    return output.last_hidden_state[:, 0]


def modernbert_pooling(output, attention_mask, config):
    if config.classifier_pooling == "cls":
        return first_token(output, attention_mask, config)
    mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
    return (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)


def roberta_head(head, features):
    """RobertaClassificationHead takes a sequence and picks its first token itself."""
    return head.classifier(features[:, None])


# model_type: (the head's input, from the frozen encoder's output; the head's logits from that input,
# through the model's own modules outside the encoder).
RECIPES = {
    # BERT and BERT-architecture models (MiniLM, MS MARCO cross-encoders): the pooler is in the encoder.
    "bert": (lambda output, mask, config: output.pooler_output,
             lambda head, features: head.classifier(head.dropout(features))),
    "roberta": (first_token, roberta_head),
    "xlm-roberta": (first_token, roberta_head),
    # The ContextPooler sits outside DeBERTa's encoder: it is trained with the classifier.
    "deberta-v2": (first_token, lambda head, features: head.classifier(head.dropout(head.pooler(features[:, None])))),
    "modernbert": (modernbert_pooling, lambda head, features: head.classifier(head.drop(head.head(features)))),
}


def cacheable(model):
    return model.config.model_type in RECIPES


def head_inputs(model, dataset, tokenizer, batch_size, device, path):
    """What the frozen encoder gives the head for every pair of `dataset`, written batch by batch to
    the float32 .npy file `path`, and returned memory-mapped from it: memory holds one batch."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    features_of = RECIPES[model.config.model_type][0]
    inputs = dataset.select_columns(model_inputs(model, tokenizer))
    loader = DataLoader(inputs, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    encoder = model.base_model.to(device).eval()
    features, start = None, 0
    with torch.no_grad():
        for batch in tqdm(loader, desc="Encoding pairs once (frozen base)"):
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            output = features_of(encoder(**batch), batch["attention_mask"], model.config).float().cpu().numpy()
            if features is None:
                features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                     shape=(len(dataset), *output.shape[1:]))
            features[start:start + len(output)] = output
            start += len(output)
    features.flush()
    del features
    return np.load(path, mmap_mode="r")


def labels_of(dataset):
    return dataset.select_columns(["label"]).with_format("numpy")[:]["label"]


def feature_dataset(features, labels):
    """The (features, labels) examples the Trainer trains the head on, read from the memory-mapped
    features one example at a time."""
    import torch

    class CachedFeatures(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, index):
            return {"features": torch.from_numpy(np.array(features[index])), "labels": int(labels[index])}

    return CachedFeatures()


def classification_head(model):
    """A module running only `model`'s head on cached features, trained in place by the Trainer.
    Its loss is cross-entropy; a one-logit model gets its loss from the Trainer's compute_loss_func,
    which keeps the labels from the module."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    logits_of = RECIPES[model.config.model_type][1]

    class ClassificationHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = torch.nn.ModuleDict({name: module for name, module in model.named_children()
                                              if name != model.base_model_prefix})

        def forward(self, features, labels=None):
            logits = logits_of(self.parts, features)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return ClassificationHead()
