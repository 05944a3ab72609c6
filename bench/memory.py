"""Run a command and measure its peak memory over its whole process tree, as the kernel counts it;
and say what CPU measured it (cpu()), since CPUs differ between this project's machines.

Peak anonymous memory (RssAnon summed over the tree, sampled every 20 ms) is what can run a
machine out of memory; memory-mapped files and the page cache, which the kernel can drop, are not
in it. Peak RSS (VmRSS summed) is reported beside it.

    python -m bench.memory -- python -m stages.split data/raw/pairs.csv data/split results/split/metrics.json
"""
import os
import subprocess
import sys
import time
from pathlib import Path

from stages.common import cpu_description


def cpu():
    """'model name, N cores, ISA' (stages.common.cpu_description)."""
    machine = cpu_description()
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['isa']}"


def status_kib(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_tree(pid):
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    return tree


def measure(command, cwd=None, env=None, interval=0.02, **popen):
    """Run `command`; return (CompletedProcess-like result, seconds, peak anonymous MiB, peak RSS MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, **popen)
    peak_anon = peak_rss = 0
    while process.poll() is None:
        tree = process_tree(process.pid)
        peak_anon = max(peak_anon, sum(status_kib(pid, "RssAnon") for pid in tree))
        peak_rss = max(peak_rss, sum(status_kib(pid, "VmRSS") for pid in tree))
        time.sleep(interval)
    seconds = time.perf_counter() - start
    return process, seconds, peak_anon / 1024, peak_rss / 1024


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    result, seconds, anon, rss = measure(arguments)
    print(f"exit {result.returncode}: {seconds:.1f} s, peak anonymous memory {anon:.0f} MiB, peak RSS {rss:.0f} MiB",
          file=sys.stderr)
    sys.exit(result.returncode)
