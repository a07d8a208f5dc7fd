"""Process start to the first step done, for `llmo run --mock` of a workflow file.

The cold-path figure: spawns `llmo run --mock FILE` N times with JSON logs and reads
the timestamp of the first "attempt succeeded" line (the mock answers at once, so the first
task's attempt ending is the first step done), against the clock read just before the spawn.
Prints the median and range, and the median of the whole process.

    python3 tests/bench/first_step.py target/release/llmo FILE [N]
"""

import os
import statistics
import subprocess
import sys
import time
from datetime import datetime


def once(llmo: str, path: str) -> tuple[float, float]:
    env = dict(os.environ, RUST_LOG="llmo_runtime::driver=debug,llmo_runtime::step=debug")
    t0 = time.time()
    p = subprocess.Popen(
        [llmo, "run", "--mock", "--log-format", "json", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    first = None
    for line in p.stderr:
        if first is None and '"attempt succeeded"' in line:
            stamp = line.split('"timestamp":"', 1)[1].split('"', 1)[0]
            first = datetime.fromisoformat(stamp).timestamp()
    p.wait()
    took = time.time() - t0
    assert p.returncode == 0 and first is not None, (p.returncode, first)
    return (first - t0) * 1e3, took * 1e3


def main() -> None:
    llmo, path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    once(llmo, path)  # warm the page cache
    runs = [once(llmo, path) for _ in range(n)]
    first = sorted(r[0] for r in runs)
    whole = [r[1] for r in runs]
    print(
        f"{path}: first step done {statistics.median(first):.1f} ms median "
        f"({first[0]:.1f}-{first[-1]:.1f}, {n} processes); whole process {statistics.median(whole):.1f} ms"
    )


if __name__ == "__main__":
    main()
