"""Synthetic query/title/label pairs with a learnable signal, of any size, written as the
pipeline's CSV: a title is relevant exactly when it is about its query's topic. Irrelevant titles
are about another covid topic (hard) or an unrelated subject (easy).

Shared by the test fixtures (tests/tiny.py) and the benchmarks; streams, so a CSV of tens of
millions of rows takes no more memory than one of a hundred.
"""
import csv
import random

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
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "title", "label"])
        writer.writerows(rows)
