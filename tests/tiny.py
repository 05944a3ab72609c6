"""Small local stand-ins for the real inputs, which need the network: the synthetic CSV, the tiny
BERT and the scratch project of bench/synthetic.py (shared with the benchmarks), with the tests'
fast training params, and tiny models of the other architectures, each in its real hub layout.
Used by the tests and by the offline demo (python -m tests.demo).
"""
from pathlib import Path

from bench import synthetic
from bench.synthetic import (PROJECT_ROOT, csv_texts, set_params,  # noqa: F401 (imported by the tests from here)
                             wordpiece_vocabulary, write_pairs_csv, write_tiny_bert)


def tiny_config(config_class, vocab_size, hidden_size=32, layers=2, heads=2, **overrides):
    return config_class(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden_size, **overrides)


def write_tiny_cross_encoder(model_dir, texts, seed=0):
    """An MS MARCO cross-encoder's layout (cross-encoder/ms-marco-MiniLM-L-6-v2): a BERT with its
    trained one-logit classifier (BertForSequenceClassification, num_labels 1), random here."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    write_tiny_bert(model_dir, texts, seed=seed)
    config = tiny_config(BertConfig, vocab_size=len(wordpiece_vocabulary(texts)), max_position_embeddings=128,
                         num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    return Path(model_dir)


def byte_level_alphabet():
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def write_tiny_roberta(model_dir, texts, seed=0):
    """A RoBERTa's layout (FacebookAI/roberta-base without tokenizer.json): byte-level BPE as
    vocab.json + merges.txt, no token_type_ids. No merges: every byte is a token, so the vocabulary
    is the same whatever the text (texts is unused, kept for a common signature)."""
    import json

    import torch
    from transformers import RobertaConfig, RobertaModel

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = ["<s>", "<pad>", "</s>", "<unk>", *byte_level_alphabet(), "<mask>"]
    (model_dir / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}), encoding="utf-8")
    (model_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "model_max_length": 128}), encoding="utf-8")
    # 2 more positions than tokens: RoBERTa numbers positions from padding_idx + 1, as roberta-base (514 for 512).
    config = tiny_config(RobertaConfig, vocab_size=len(vocabulary), max_position_embeddings=130, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    torch.manual_seed(seed)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(model_dir)
    return model_dir


def write_tiny_deberta_v3(model_dir, texts, seed=0):
    """A DeBERTa-v3's layout (microsoft/deberta-v3-base): a SentencePiece unigram model spm.model
    (its pieces: the words and characters of `texts`), tokenizer_config.json, pickled weights only,
    relative attention and no token type embeddings (type_vocab_size 0)."""
    import json
    import re

    import torch
    from sentencepiece import sentencepiece_model_pb2
    from transformers import DebertaV2Config, DebertaV2Model

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    spm = sentencepiece_model_pb2.ModelProto()
    for piece, kind in [("[PAD]", 3), ("[CLS]", 3), ("[SEP]", 3), ("[UNK]", 2)]:  # 3 control, 2 unknown
        spm.pieces.add(piece=piece, score=0.0, type=kind)
    for piece in ["\u2581" + word for word in words] + ["\u2581", *sorted({c for word in words for c in word})]:
        spm.pieces.add(piece=piece, score=-float(len(piece)), type=1)
    spm.trainer_spec.model_type, spm.trainer_spec.unk_id = 1, 3  # unigram
    spm.trainer_spec.bos_id, spm.trainer_spec.eos_id, spm.trainer_spec.pad_id = -1, -1, 0
    spm.normalizer_spec.name, spm.normalizer_spec.add_dummy_prefix = "identity", True
    (model_dir / "spm.model").write_bytes(spm.SerializeToString())
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": True, "model_max_length": 128, "bos_token": "[CLS]",
         "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
         "mask_token": "[MASK]"}), encoding="utf-8")
    config = tiny_config(DebertaV2Config, vocab_size=len(spm.pieces) + 1, max_position_embeddings=128,
                         type_vocab_size=0, relative_attention=True, position_biased_input=False,
                         pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=16,
                         norm_rel_ebd="layer_norm", share_att_key=True, pad_token_id=0)
    config.save_pretrained(model_dir)
    torch.manual_seed(seed)
    torch.save(DebertaV2Model(config).state_dict(), model_dir / "pytorch_model.bin")
    return model_dir


def write_tiny_modernbert(model_dir, texts, seed=0):
    """A ModernBERT's layout (answerdotai/ModernBERT-base): tokenizer.json (byte-level BPE, here
    without merges, and a [CLS] A [SEP] B [SEP] template), inputs input_ids and attention_mask only,
    alternating global and sliding-window attention. texts is unused, as for RoBERTa."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import ModernBertConfig, ModernBertModel

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocabulary = [*specials, *byte_level_alphabet()]
    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(vocabulary)}, [], unk_token="[UNK]"))
    tokenizer.add_special_tokens(specials)
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"],
         "model_max_length": 128, "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
         "pad_token": "[PAD]", "mask_token": "[MASK]"}), encoding="utf-8")
    config = tiny_config(ModernBertConfig, vocab_size=len(vocabulary), max_position_embeddings=128, layers=3,
                         global_attn_every_n_layers=2, local_attention=16, pad_token_id=3, bos_token_id=1,
                         eos_token_id=2, cls_token_id=1, sep_token_id=2)
    torch.manual_seed(seed)
    ModernBertModel(config).save_pretrained(model_dir)
    return model_dir


# A tiny stand-in, built locally, for each architecture family the pipeline is tested with.
TINY_MODELS = {"bert": write_tiny_bert, "cross-encoder": write_tiny_cross_encoder, "roberta": write_tiny_roberta,
               "deberta-v3": write_tiny_deberta_v3, "modernbert": write_tiny_modernbert}


# The tiny BERT starts from random weights: it needs the full fine-tune and a hundred-odd steps at a
# high learning rate to pick up the signal; that still takes seconds on two CPU cores. 10 epochs:
# validation ROC-AUC 0.71 (20 epochs overfit, 0.69; 8 epochs at 3e-3 reached 0.64).
FAST_PARAMS = {
    "split": {"val_size": 0.25},
    "train": {"epochs": 10, "batch_size": 16, "eval_batch_size": 32, "learning_rate": 1e-3,
              "warmup_steps": 0, "freeze_base": False},
}


def make_scratch_project(dest, csv_path, model_dir, params=FAST_PARAMS, use_git=True, **options):
    """bench.synthetic.make_scratch_project with the tests' fast training params."""
    return synthetic.make_scratch_project(dest, csv_path, model_dir, params, use_git, **options)
