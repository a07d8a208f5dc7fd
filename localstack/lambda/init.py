#!/usr/bin/python3
"""The init of a Lambda execution environment under LocalStack, on this machine.

LocalStack's Docker executor starts each function container with `/var/rapid/init` as its
entrypoint; its own init is a Go binary it downloads from GitHub at first use, which is out of
reach here. This is the same protocol in Python's standard library:

- to LocalStack (`LOCALSTACK_RUNTIME_ENDPOINT`): `POST /status/<runtime id>/ready` once the
  function has asked for its first invocation (or `/error` if it cannot start), and per
  invocation `POST /invocations/<request id>/logs` then `/response` or `/error`;
- from LocalStack: `POST /invoke` on the interop port (`LOCALSTACK_INTEROP_PORT`), one
  invocation's JSON;
- to the function (`bootstrap`): the Lambda Runtime API (`/2018-06-01/runtime/...`) on an
  ephemeral port, given as `AWS_LAMBDA_RUNTIME_API`.

Every socket binds 127.0.0.1 (containers run on the host network). An invocation past the
function's timeout is answered with Lambda's timeout error and the runtime is stopped (the
next invocation gets a new environment), as on AWS. Not emulated: extensions, the telemetry
API, X-Ray, response streaming, running as a non-root user.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCALSTACK = os.environ["LOCALSTACK_RUNTIME_ENDPOINT"].rstrip("/")
RUNTIME_ID = os.environ["LOCALSTACK_RUNTIME_ID"]
INTEROP_PORT = int(os.environ.get("LOCALSTACK_INTEROP_PORT") or 9563)
TIMEOUT_S = float(os.environ.get("AWS_LAMBDA_FUNCTION_TIMEOUT") or 3)
VERSION = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
MEMORY_MB = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(msg):
    print(f"[init] {msg}", flush=True)


def tell(path, body):
    """POSTs to LocalStack; a LocalStack that is gone has nothing left to hear."""
    req = urllib.request.Request(LOCALSTACK + path, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=30) as r:
            r.read()
    except OSError as e:
        say(f"POST {path}: {e}")


class Environment:
    """The invocations waiting, the one the function holds, and what it printed meanwhile."""

    def __init__(self):
        self.waiting = queue.Queue()
        self.lock = threading.Lock()
        self.current = None
        self.ready = False
        self.output = []
        self.process = None

    def take(self):
        inv = self.waiting.get()
        with self.lock:
            inv["started"] = time.time()
            inv["deadline"] = inv["started"] + TIMEOUT_S
            self.current = inv
            self.output.append(f"START RequestId: {inv['invoke-id']} Version: {VERSION}\n")
        return inv

    def end(self, request_id, outcome, body):
        """Reports the invocation's logs and outcome to LocalStack, once."""
        with self.lock:
            inv = self.current
            if inv is None or inv["invoke-id"] != request_id:
                return False
            self.current = None
            ms = (time.time() - inv["started"]) * 1000
            self.output.append(f"END RequestId: {request_id}\n")
            self.output.append(
                f"REPORT RequestId: {request_id}\tDuration: {ms:.2f} ms\tBilled Duration: {int(ms) + 1} ms\t"
                f"Memory Size: {MEMORY_MB} MB\tMax Memory Used: {MEMORY_MB} MB\t\n"
            )
            logs, self.output = "".join(self.output), []
        tell(f"/invocations/{request_id}/logs", json.dumps({"logs": logs}).encode())
        tell(f"/invocations/{request_id}/{outcome}", body)
        return True


ENV = Environment()


def expire(request_id, deadline):
    time.sleep(max(0.0, deadline - time.time()))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    err = {"errorMessage": f"{stamp} {request_id} Task timed out after {TIMEOUT_S:.2f} seconds"}
    if ENV.end(request_id, "error", json.dumps(err).encode()):
        say("the invocation timed out: the runtime is stopped")
        ENV.process.kill()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


class RuntimeApi(Handler):
    """What the function's runtime client calls."""

    def do_GET(self):
        if self.path.rstrip("/") != "/2018-06-01/runtime/invocation/next":
            return self.answer(404, b'{"errorMessage":"not found"}')
        if not ENV.ready:
            ENV.ready = True
            tell(f"/status/{RUNTIME_ID}/ready", b"{}")
        inv = ENV.take()
        threading.Thread(target=expire, args=(inv["invoke-id"], inv["deadline"]), daemon=True).start()
        self.answer(
            200,
            inv["payload"].encode(),
            (
                ("Content-Type", "application/json"),
                ("Lambda-Runtime-Aws-Request-Id", inv["invoke-id"]),
                ("Lambda-Runtime-Deadline-Ms", str(int(inv["deadline"] * 1000))),
                ("Lambda-Runtime-Invoked-Function-Arn", inv.get("invoked-function-arn", "")),
                ("Lambda-Runtime-Trace-Id", inv.get("trace-id", "")),
            ),
        )

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        body = self.read_body()
        if len(parts) == 5 and parts[:3] == ["2018-06-01", "runtime", "invocation"] and parts[4] in ("response", "error"):
            if ENV.end(parts[3], parts[4], body):
                return self.answer(202, b'{"status":"OK"}')
            return self.answer(400, b'{"errorMessage":"no such invocation"}')
        if parts == ["2018-06-01", "runtime", "init", "error"]:
            tell(f"/status/{RUNTIME_ID}/error", body or b'{"errorMessage":"init error"}')
            return self.answer(202, b'{"status":"OK"}')
        self.answer(404, b'{"errorMessage":"not found"}')


class Interop(Handler):
    """What LocalStack calls: one invocation at a time."""

    def do_POST(self):
        raw = self.read_body()
        if self.path.rstrip("/") != "/invoke":
            return self.answer(404, b"not found")
        ENV.waiting.put(json.loads(raw))
        self.answer(200, b"OK")


def serve(handler, port):
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def main():
    for p in json.loads(os.environ.get("LOCALSTACK_CHMOD_PATHS") or "[]"):
        try:
            os.chmod(p["path"], int(p["mode"], 8))
        except OSError:
            pass
    bootstrap = next((b for b in ("/var/task/bootstrap", "/opt/bootstrap", "/var/runtime/bootstrap") if os.access(b, os.X_OK)), None)
    if bootstrap is None:
        err = {"errorType": "Runtime.InvalidEntrypoint", "errorMessage": "no executable bootstrap in /var/task, /opt or /var/runtime"}
        tell(f"/status/{RUNTIME_ID}/error", json.dumps(err).encode())
        sys.exit(1)
    api_port = serve(RuntimeApi, 0)
    serve(Interop, INTEROP_PORT)
    say(f"runtime API on 127.0.0.1:{api_port}, invocations on 127.0.0.1:{INTEROP_PORT}, {bootstrap}")
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{api_port}")
    ENV.process = subprocess.Popen([bootstrap], cwd="/var/task", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in iter(ENV.process.stdout.readline, b""):
        text = line.decode("utf-8", "replace")
        sys.stdout.write(text)
        sys.stdout.flush()
        with ENV.lock:
            ENV.output.append(text)
    code = ENV.process.wait()
    err = json.dumps({"errorType": "Runtime.ExitError", "errorMessage": f"Runtime exited with error: exit status {code}"}).encode()
    if not ENV.ready:
        tell(f"/status/{RUNTIME_ID}/error", err)
    else:
        with ENV.lock:
            inv = ENV.current
        if inv is not None:
            ENV.end(inv["invoke-id"], "error", err)
    say(f"the function's process exited ({code})")
    sys.exit(1)


if __name__ == "__main__":
    main()
