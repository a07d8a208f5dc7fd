"""What the browser tests share: the API they test (argv[1], LLMO_TOKEN), calls to it, checks,
where screenshots go, and a headless Chromium (Debian's package) driven by Playwright."""

import json
import os
import sys
import urllib.request

API = sys.argv[1].rstrip("/")
TOKEN = os.environ["LLMO_TOKEN"]
OUT = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "ui")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def call(method, path, body=None):
    """The API's JSON answer to a request with the test's bearer token."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def chromium(p):
    """Headless Chromium, quiet (no background networking)."""
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
