"""Train only the classification head of a frozen BERT on features computed once.

With train.freeze_base the encoder never changes, so running it on every batch of every epoch,
as the reference recipe does, repeats the same work. Here the encoder runs once per pair, in
eval mode (its dropout off: the one difference from the reference, whose frozen encoder still
runs in training mode), and the Trainer then trains the model's own dropout + classifier on the
pooled outputs. The head shares its modules with the model, so the saved model is complete.
"""
import numpy as np


def pooled_features(model, dataset, tokenizer, batch_size, device):
    """BERT's pooled output for every pair of `dataset`, as a float32 array."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    inputs = dataset.select_columns(tokenizer.model_input_names)
    loader = DataLoader(inputs, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    encoder = model.base_model.to(device).eval()
    pooled = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="Encoding pairs once (frozen base)"):
            pooled.append(encoder(**{k: v.to(device) for k, v in batch.items()}).pooler_output.float().cpu().numpy())
    return np.concatenate(pooled)


def feature_dataset(features, labels):
    from datasets import Dataset

    return Dataset.from_dict({"pooled_output": features, "labels": np.asarray(labels)}).with_format("torch")


def classification_head(model):
    """A module running only `model`'s dropout and classifier, trained in place by the Trainer."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ClassificationHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout, self.classifier = model.dropout, model.classifier

        def forward(self, pooled_output, labels=None):
            logits = self.classifier(self.dropout(pooled_output))
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return ClassificationHead()
