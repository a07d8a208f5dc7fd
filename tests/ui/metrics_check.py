"""Checks a Prometheus text exposition with a maintained parser (prometheus_client's, the
Prometheus project's Python client), and with `promtool check metrics` when promtool is
installed. Fails when the text does not parse, a metric family is malformed, or a required
sample is missing.

Usage: metrics_check.py URL [REQUIRED_SAMPLE ...]   (LLMO_TOKEN is sent when set)
"""

import os
import shutil
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url, required = sys.argv[1], sys.argv[2:]
    req = urllib.request.Request(url)
    if os.environ.get("LLMO_TOKEN"):
        req.add_header("Authorization", "Bearer " + os.environ["LLMO_TOKEN"])
    with urllib.request.urlopen(req, timeout=10) as r:
        ctype = r.headers.get("content-type", "")
        text = r.read().decode()
    if not ctype.startswith("text/plain"):
        raise SystemExit(f"FAIL: {url}: content-type {ctype}")
    samples = {}
    families = 0
    for fam in text_string_to_metric_families(text):
        families += 1
        if fam.type not in ("counter", "gauge", "histogram", "summary", "untyped"):
            raise SystemExit(f"FAIL: {fam.name}: type {fam.type}")
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    missing = [m for m in required if m not in samples]
    if missing:
        raise SystemExit(f"FAIL: {url}: no {', '.join(missing)} (has {', '.join(sorted(samples))})")
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=text, text=True, capture_output=True)
        # promtool reports lint findings (naming advice) on stdout and fails on parse errors.
        if p.returncode != 0 and "error" in (p.stderr + p.stdout).lower():
            raise SystemExit(f"FAIL: promtool check metrics: {p.stderr}{p.stdout}")
    print(f"{url}: {families} metric families, {sum(len(v) for v in samples.values())} samples parse"
          + (" (promtool too)" if shutil.which("promtool") else ""))


if __name__ == "__main__":
    main()
