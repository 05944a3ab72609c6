"""Vespa's global phase, replayed here: the inputs Vespa's token features build for a hit, the
length L they are padded to, and what scoring one hit at a time costs and how it ranks.

Vespa's global phase scores each reranked hit alone (batch 1) on exactly L tokens, with
ceil(vCPU/4) intra-op threads and full graph optimization (model-integration's
OnnxEvaluatorOptions). Its `hugging-face-tokenizer` component adds no special tokens and neither
truncates nor pads (config-model's HuggingFaceTokenizer.java).
"""
import math
import statistics
import time

import numpy as np

from stages.common import read_pairs

LENGTH_STEP = 8  # L is a multiple of 8: the kernels' vector widths, and a round number in a schema
WARMUP_HITS = 10  # runs before the timed ones: allocations and kernel selection happen there
TIMING_BLOCK = 20  # hits timed in a row per file before the next file's turn
RERUN_THREADS = (1, 4)  # a hit scored again at these intra-op threads: ceil(vCPU/4) on a 4- and a 16-vCPU node


def vespa_tokenizer(tokenizer_path):
    """tokenizer.json as Vespa's hugging-face-tokenizer component uses it, whatever the file says:
    no truncation, no padding, no special tokens (config-model's HuggingFaceTokenizer.java)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def embed(tokenizer, texts, length):
    """What `embed tokenizer` puts in a tensor<float>(d0[length]): the text's ids, cut or zero-padded."""
    return [(encoding.ids + [0] * length)[:length] for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def token_features(query_tensor, title_tensor, length, cls, sep):
    """input_ids, token_type_ids and attention_mask of one hit, computed as Vespa computes
    customTokenInputIds(cls, sep, length, q, t) (tokenInputIds: cls 101, sep 102), tokenTypeIds and
    tokenAttentionMask(length, q, t): vespa-engine/vespa, config-model/src/main/java/com/yahoo/schema/
    expressiontransforms/TokenTransformer.java. An argument's length is its count of non-zero ids
    (`sum(map(input, f(x)(x > 0)))`), its tokens the first that many of its tensor; the sequence
    CLS q SEP t SEP is cut at `length`, final SEP included, and zero-padded."""
    query_length, title_length = (sum(1 for token in tensor if token > 0) for tensor in (query_tensor, title_tensor))
    sequence = [cls, *query_tensor[:query_length], sep, *title_tensor[:title_length], sep]
    query_part, total = 1 + query_length + 1, len(sequence)
    return {"input_ids": (sequence + [0] * length)[:length],
            "token_type_ids": [0 if d1 < query_part else 1 if d1 < total else 0 for d1 in range(length)],
            "attention_mask": [1 if d1 < total else 0 for d1 in range(length)]}


def length_counts(tokenizer, csv_path, longest, batch=1000):
    """How many pairs of a CSV Vespa builds at each length (CLS query SEP title SEP, uncut), as
    counts[length], with every pair longer than `longest` counted at longest + 1. `batch` pairs are
    tokenized at a time: each tokenizers Encoding weighs a kilobyte or more."""
    counts = np.zeros(longest + 2, dtype=np.int64)
    for chunk in read_pairs(csv_path):
        for start in range(0, len(chunk), batch):
            rows = chunk.iloc[start:start + batch]
            queries, titles = (tokenizer.encode_batch(rows[c].tolist(), add_special_tokens=False) for c in ("query", "title"))
            lengths = [3 + len(query.ids) + len(title.ids) for query, title in zip(queries, titles)]
            counts += np.bincount(np.minimum(lengths, longest + 1), minlength=longest + 2)
    return counts


def covering_length(counts, coverage, longest):
    """The smallest multiple of LENGTH_STEP whose sequences hold `coverage` of the counted pairs,
    at most `longest`."""
    held = np.cumsum(counts) / counts.sum()
    fits = int(np.searchsorted(held, coverage - 1e-12))  # the first length holding that share
    return min(longest, max(LENGTH_STEP, math.ceil(fits / LENGTH_STEP) * LENGTH_STEP))


def hit_session(onnx_path, threads):
    """An onnxruntime session set up as Vespa sets up a global-phase model on a CPU: `threads`
    intra-op threads, one inter-op thread, sequential execution, every graph optimization."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def hit_feeds(tokenizer, queries, titles, length, cls, sep, inputs):
    """Each hit's model inputs as Vespa builds them: batch 1, exactly `length` tokens."""
    feeds = []
    for query, title in zip(embed(tokenizer, queries, length), embed(tokenizer, titles, length)):
        features = token_features(query, title, length, cls, sep)
        feeds.append({name: np.array([features[name]], dtype=np.int64) for name in inputs})
    return feeds


def score_hits(session, feeds, output):
    """Each hit's logits, one run per hit as Vespa's global phase runs them."""
    return np.array([session.run([output], feed)[0][0] for feed in feeds])


def time_hits(sessions, feeds, output, timed_runs):
    """{name: the milliseconds of at least `timed_runs` single-hit runs} for each of `sessions`, after
    WARMUP_HITS untimed runs each. They are timed in blocks of TIMING_BLOCK hits in a row, the sessions
    taking turns, each block after one untimed run: a load that drifts while the machine is shared
    then weighs on every file alike. The hits are cycled through."""
    for session in sessions.values():
        for feed in feeds[:1] * WARMUP_HITS:
            session.run([output], feed)
    milliseconds = {name: [] for name in sessions}
    for block in range(0, timed_runs, TIMING_BLOCK):
        for name, session in sessions.items():
            session.run([output], feeds[block % len(feeds)])
            for run in range(block, block + TIMING_BLOCK):
                feed = feeds[run % len(feeds)]
                start = time.perf_counter()
                session.run([output], feed)
                milliseconds[name].append((time.perf_counter() - start) * 1000)
    return milliseconds


def rerun_change(onnx_path, feeds, output, logits):
    """The largest change of a hit's logits when `feeds` are scored again, each in a fresh session
    at every count of RERUN_THREADS intra-op threads: 0 when the file scores deterministically."""
    change = 0.0
    for threads in RERUN_THREADS:
        again = score_hits(hit_session(onnx_path, threads), feeds, output)
        change = max(change, float(np.abs(again - logits[:len(feeds)]).max()))
    return change


def cost(milliseconds, threads, rerank_count):
    """Median and 99th-percentile milliseconds per hit, and CPU milliseconds per query reranking
    `rerank_count` hits at the median."""
    median = statistics.median(milliseconds)
    return {"ms_per_hit": median, "ms_per_hit_p99": float(np.percentile(milliseconds, 99)),
            "cpu_ms_per_query": median * threads * rerank_count}
