"""Small local stand-ins for the real inputs, which need the network: a synthetic
query/title/label CSV with a learnable signal, a tiny randomly initialised BERT with a
WordPiece vocabulary built from that CSV, and a scratch copy of the project to run dvc in.
Used by the tests and by the offline demo (python -m tests.demo).
"""
import csv
import random
import shutil
import subprocess
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "scorer", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]

TOPICS = {
    "transmission": ["airborne", "droplets", "aerosol", "spread"],
    "vaccine": ["vaccine", "immunization", "antibody", "trial"],
    "masks": ["masks", "respirators", "face", "coverings"],
    "children": ["children", "pediatric", "infants", "school"],
    "treatment": ["remdesivir", "treatment", "antiviral", "drug"],
    "origin": ["bats", "origin", "zoonotic", "spillover"],
    "testing": ["testing", "diagnostic", "pcr", "assay"],
    "mental": ["mental", "anxiety", "depression", "stress"],
    "weather": ["weather", "temperature", "humidity", "seasonal"],
    "heart": ["cardiac", "heart", "myocarditis", "vascular"],
}
# Titles about other subjects: irrelevant to every query, an easy signal even a tiny model learns.
OFF_TOPIC = {
    "markets": ["stock", "market", "investors", "trading"],
    "football": ["football", "league", "goalkeeper", "transfer"],
    "cooking": ["recipes", "baking", "flour", "kitchen"],
    "astronomy": ["telescope", "galaxy", "planets", "orbit"],
}
FILLER = ["study", "analysis", "of", "the", "in", "patients", "during", "pandemic", "outbreak", "novel", "results", "cohort"]


def write_pairs_csv(path, titles_per_query=12, seed=0):
    """Two queries per topic; a title is relevant exactly when it is about the query's topic.
    Irrelevant titles are about another covid topic (hard) or an unrelated subject (easy)."""
    rng = random.Random(seed)
    rows = []
    for topic, words in TOPICS.items():
        for query in (f"coronavirus {words[0]} {words[1]}", f"{words[2]} and {words[3]} in covid"):
            for i in range(titles_per_query):
                relevant = i % 2 == 0
                if relevant:
                    title_topic = words
                elif i % 4 == 1:
                    title_topic = TOPICS[rng.choice([t for t in TOPICS if t != topic])]
                else:
                    title_topic = OFF_TOPIC[rng.choice(list(OFF_TOPIC))]
                title_words = rng.sample(title_topic, 2) + rng.sample(FILLER, 3)
                rng.shuffle(title_words)
                rows.append((query, " ".join(title_words).capitalize(), int(relevant)))
    rng.shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "title", "label"])
        writer.writerows(rows)
    return path


def wordpiece_vocabulary(texts):
    """Every word of `texts` as BERT splits them, and every character alone and as a ##suffix, sorted.

    Not tokenizers' WordPiece trainer: it breaks frequency ties differently in every process, so
    the same text gave a different vocabulary, model and test results from one run to the next.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    characters = {character for word in words for character in word}
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words | characters | {f"##{c}" for c in characters})]


def write_tiny_bert(model_dir, texts, hidden_size=32, layers=2, heads=2, seed=0):
    """Save a randomly initialised BertModel and a WordPiece tokenizer whose vocabulary comes from `texts`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "vocab.txt").write_text("\n".join(wordpiece_vocabulary(texts)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), model_max_length=128)
    tokenizer.save_pretrained(model_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden_size, max_position_embeddings=128)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(model_dir)  # safetensors by default
    return model_dir


def csv_texts(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [text for row in csv.DictReader(f) for text in (row["query"], row["title"])]


# The tiny BERT starts from random weights: it needs the full fine-tune and a couple of hundred
# steps at a high learning rate to pick up the signal; that still takes seconds on two CPU cores.
FAST_PARAMS = {
    "split": {"val_size": 0.25},
    "train": {"epochs": 20, "batch_size": 16, "eval_batch_size": 32, "learning_rate": 1e-3,
              "warmup_steps": 0, "freeze_base": False},
}


def set_params(project, updates):
    """Merge {section: {key: value}} into the project's params.yaml."""
    params_path = Path(project) / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for section, values in updates.items():
        params[section].update(values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_scratch_project(dest, csv_path, model_dir, params=FAST_PARAMS, use_git=True):
    """Copy the project into `dest` as a fresh git + dvc repository pointed at local inputs
    (a plain folder with use_git=False, for machines without git)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / name)
    set_params(dest, {"data": {"url": str(csv_path)}, "model": {"name": str(model_dir)}, **params})
    if not use_git:
        return dest
    git = ["git", "-c", "user.name=scratch", "-c", "user.email=scratch@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "scratch copy of the pipeline"], cwd=dest, check=True)
    return dest
