"""bench/: the compute model behind the GPU utilisation figure agrees with torch's own FLOP count, and
the memory measurement counts a command's whole process tree."""
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench.benchmark import useful_training_flops
from bench.memory import measure
from bench.synthetic import realistic_pairs
from tests.tiny import write_tiny_bert


def test_useful_training_flops_match_torchs_flop_counter_for_bert_small(tmp_path):
    queries, titles, labels = realistic_pairs(4, seed=1)
    model_dir = write_tiny_bert(tmp_path / "bert-small", queries + titles, hidden_size=512, layers=4, heads=8)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    counted = 0
    for query, title, label in zip(queries, titles, labels):  # one pair at a time: no padding to count
        with FlopCounterMode(display=False) as counter:
            model(**tokenizer([query], [title], return_tensors="pt"), labels=torch.tensor([label])).loss.backward()
        counted += counter.get_total_flops()
    # The estimate counts the pooler and classifier for every token, torch only for [CLS]: a few % more.
    assert useful_training_flops(model_dir, queries, titles) == pytest.approx(counted, rel=0.05)


def test_measure_counts_the_anonymous_memory_of_a_grandchild_process():
    allocate = "import time; data = b'x' * (200 * 2**20); time.sleep(0.5)"
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {allocate!r}])"
    process, _, anon_mib, rss_mib = measure([sys.executable, "-c", spawn])
    assert process.returncode == 0 and 200 <= anon_mib <= rss_mib
