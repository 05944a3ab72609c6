"""How the benchmarks measure: a function's median wall time (median_time); a command's time and peak
memory over its whole process tree, as the kernel counts it (measure); and what CPU measured it (cpu()),
since CPUs differ between this project's machines.

Peak anonymous memory (resident less file-backed and shared pages, summed over the tree, sampled every
20 ms) is what can run a machine out of memory; memory-mapped files and the page cache, which the kernel
can drop, are not in it. Peak RSS is reported beside it.

    python -m bench.memory -- python -m stages.split data/raw/pairs.csv data/split results/split/metrics.json
"""
import statistics
import subprocess
import sys
import time

import psutil

from stages.common import cpu_description


def cpu():
    """'model name, N cores, ISA' (stages.common.cpu_description)."""
    machine = cpu_description()
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['isa']}"


def median_time(run, repeats):
    """Median wall time of `repeats` calls of run() after one warm-up call; also the last result."""
    run()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def tree_memory(pid):
    """(anonymous, resident) bytes summed over the process `pid` and its descendants; anonymous is statm's
    resident less its shared pages (file-backed and shmem), the RssAnon of /proc/PID/status."""
    try:
        root = psutil.Process(pid)
        memories = [process.memory_info() for process in (root, *root.children(recursive=True))]
    except psutil.Error:  # a process ended while being read: this sample is skipped
        return 0, 0
    return sum(m.rss - m.shared for m in memories), sum(m.rss for m in memories)


def measure(command, cwd=None, env=None, interval=0.02, **popen):
    """Run `command`; return (CompletedProcess-like result, seconds, peak anonymous MiB, peak RSS MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, **popen)
    peak_anon = peak_rss = 0
    while process.poll() is None:
        anon, rss = tree_memory(process.pid)
        peak_anon, peak_rss = max(peak_anon, anon), max(peak_rss, rss)
        time.sleep(interval)
    return process, time.perf_counter() - start, peak_anon / 2**20, peak_rss / 2**20


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--"]:
        arguments = arguments[1:]
    result, seconds, anon, rss = measure(arguments)
    print(f"exit {result.returncode}: {seconds:.1f} s, peak anonymous memory {anon:.0f} MiB, peak RSS {rss:.0f} MiB",
          file=sys.stderr)
    sys.exit(result.returncode)
