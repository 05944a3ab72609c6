"""Synthetic inputs for the pipeline, shared by the test fixtures (tests/tiny.py) and the benchmarks:

- query/title/label CSVs with a learnable signal, of any size (a title is relevant exactly when it
  is about its query's topic; irrelevant titles are about another covid topic, hard, or an
  unrelated subject, easy), streamed, so tens of millions of rows take no more memory than a hundred;
- the benchmarks' pairs of realistic lengths, grouped by query (realistic_pairs);
- a tiny randomly initialised BERT with a WordPiece vocabulary built from such text;
- a scratch copy of the project, pointed at them, to run the stages or dvc in.
"""
import csv
import random
import shutil
import subprocess
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "scorer", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"]
# Beside the pipeline, what `python -m tune` runs with (glob patterns): it imports stages/ too.
TUNE_FILES = ["tune", "scripts", "search_space*.yaml"]

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


def topic_queries(words):
    return (f"coronavirus {words[0]} {words[1]}", f"{words[2]} and {words[3]} in covid")


def title_for(rng, topic, relevant, kind, filler_words):
    """A title about `topic` when relevant; else about another covid topic (kind 1) or another subject."""
    if relevant:
        words = TOPICS[topic]
    elif kind == 1:
        words = TOPICS[rng.choice([t for t in TOPICS if t != topic])]
    else:
        words = OFF_TOPIC[rng.choice(list(OFF_TOPIC))]
    title = rng.sample(words, 2) + rng.sample(FILLER, filler_words)
    rng.shuffle(title)
    return " ".join(title).capitalize()


def realistic_pairs(queries, titles_per_query=1, relevant_share=0.5, seed=0):
    """(queries, titles, labels) lists, the benchmarks' pairs: `queries` distinct queries of 2-6 words on a
    covid topic, each followed by `titles_per_query` titles of 6-30 words (CORD-19's titles vary that much).
    A title is relevant (about its query's topic) with probability relevant_share; an irrelevant one is
    about any topic, its query's included, or another subject: ambiguous enough that a model trained on
    them stays short of a perfect ROC-AUC, which would hide what quantization or a bug costs."""
    rng = random.Random(seed)
    topics, others = list(TOPICS.values()), list(OFF_TOPIC.values())
    seen, rows = set(), ([], [], [])
    while len(seen) < queries:
        words = rng.choice(topics)
        query = " ".join(rng.sample(words + FILLER, rng.randint(2, 6)))
        if query in seen:
            continue
        seen.add(query)
        for _ in range(titles_per_query):
            relevant = rng.random() < relevant_share
            title_words = words if relevant else rng.choice(others + topics)
            title = " ".join(rng.choices(title_words + FILLER, k=rng.randint(6, 30))).capitalize()
            for column, value in zip(rows, (query, title, int(relevant))):
                column.append(value)
    return rows


def write_pairs_csv(path, titles_per_query=12, seed=0):
    """The test fixture: two queries per topic, `titles_per_query` short titles each, half relevant."""
    rng = random.Random(seed)
    rows = [(query, title_for(rng, topic, i % 2 == 0, i % 4, 3), int(i % 2 == 0))
            for topic, words in TOPICS.items() for query in topic_queries(words) for i in range(titles_per_query)]
    rng.shuffle(rows)
    write_rows(path, rows)
    return path


def write_scale_csv(path, rows, titles_per_query=50, seed=0):
    """`rows` pairs of realistic length (queries of 4-6 words, titles of 8-14, as CORD-19's), in
    queries of `titles_per_query` titles, streamed to `path`. Query i is its topic's query with a
    number, so there are rows / titles_per_query distinct queries."""
    rng = random.Random(seed)
    topics = list(TOPICS)

    def generate():
        for number in range(-(-rows // titles_per_query)):
            topic = topics[number % len(topics)]
            query = f"{topic_queries(TOPICS[topic])[number % 2]} {number}"
            for i in range(min(titles_per_query, rows - number * titles_per_query)):
                relevant = rng.random() < 0.4
                yield query, title_for(rng, topic, relevant, rng.randrange(2), rng.randrange(6, 13)), int(relevant)

    write_rows(path, generate())
    return path


def write_rows(path, rows):
    """(query, title, label) rows as the pipeline's CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "title", "label"])
        writer.writerows(rows)
    return path


def wordpiece_vocabulary(texts, bert_base_ids=False):
    """Every word of `texts` as BERT splits them, and every character alone and as a ##suffix, sorted.
    With bert_base_ids, the special tokens have bert-base-uncased's ids, which the default model's
    vocabulary shares: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, [unused*] between.

    Not tokenizers' WordPiece trainer: it breaks frequency ties differently in every process, so
    the same text gave a different vocabulary, model and test results from one run to the next.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    characters = {character for word in words for character in word}
    pieces = sorted(words | characters | {f"##{c}" for c in characters})
    if bert_base_ids:
        return ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]


def write_tiny_bert(model_dir, texts, hidden_size=32, layers=2, heads=2, seed=0, bert_base_ids=False, vocab_size=0,
                    max_length=128):
    """Save a randomly initialised BertModel and a WordPiece tokenizer whose vocabulary comes from `texts`
    (special tokens numbered as in bert-base-uncased with bert_base_ids), padded with [unusedN] entries
    to vocab_size tokens (BERT's 30,522, so the embeddings are the real size) when that is larger."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    words = wordpiece_vocabulary(texts, bert_base_ids)
    words += [f"[unused{i}]" for i in range(len(words), vocab_size)]
    (model_dir / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(model_dir / "vocab.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(model_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden_size, max_position_embeddings=max_length)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(model_dir)  # safetensors by default
    return model_dir


def csv_texts(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as f:
        return [text for row in csv.DictReader(f) for text in (row["query"], row["title"])]


def set_params(project, updates, keep_comments=False):
    """Merge {section: {key: value}} into the project's params.yaml; with keep_comments, as DVC edits
    it (ruamel.yaml's round trip): its comments, and how each value left alone is written, kept."""
    params_path = Path(project) / "params.yaml"
    if keep_comments:
        from ruamel.yaml import YAML

        round_trip = YAML()
        round_trip.representer.add_representer(  # `null` as params.yaml writes it, not an empty value
            type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
        params = round_trip.load(params_path.read_text())
    else:
        params = yaml.safe_load(params_path.read_text())
    for section, values in updates.items():
        params[section].update(values)
    if keep_comments:
        with open(params_path, "w") as f:
            round_trip.dump(params, f)
    else:
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_scratch_project(dest, csv_path, model_dir, params=None, use_git=True, extra_files=(), keep_comments=False):
    """Copy the project into `dest` as a fresh git + dvc repository pointed at local inputs
    (a plain folder with use_git=False, for machines without git), with the files and folders that
    match the patterns `extra_files` (TUNE_FILES: what `python -m tune` needs) and, with
    keep_comments, params.yaml's comments (set_params)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    extras = [str(path.relative_to(PROJECT_ROOT)) for pattern in extra_files for path in sorted(PROJECT_ROOT.glob(pattern))]
    for name in [*PROJECT_FILES, *extras]:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / name)
    set_params(dest, {"data": {"url": str(csv_path)}, "model": {"name": str(model_dir)}, **(params or {})}, keep_comments)
    if not use_git:
        return dest
    git = ["git", "-c", "user.name=scratch", "-c", "user.email=scratch@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "scratch copy of the pipeline"], cwd=dest, check=True)
    return dest


def pipeline_stages(dvc_yaml=PROJECT_ROOT / "dvc.yaml"):
    """The stages of dvc.yaml, (name, stage) in an order that runs each after the stages whose outputs
    it reads, otherwise in file order, as `dvc repro` does: for running them on machines without dvc."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]

    def paths(entries):
        return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]

    def overlaps(a, b):
        a, b = a.rstrip("/"), b.rstrip("/")
        return a == b or a.startswith(b + "/") or b.startswith(a + "/")

    outs = {name: paths(s.get("outs")) + paths(s.get("metrics")) + paths(s.get("plots")) for name, s in stages.items()}
    needs = {name: {other for other in stages if other != name
                    for dep in paths(s.get("deps")) for out in outs[other] if overlaps(dep, out)}
             for name, s in stages.items()}
    order = []
    while len(order) < len(stages):
        ready = [name for name in stages if name not in order and needs[name] <= set(order)]
        if not ready:
            raise SystemExit(f"error: {dvc_yaml}: the stages' dependencies form a cycle")
        order.append(ready[0])
    return [(name, stages[name]) for name in order]
