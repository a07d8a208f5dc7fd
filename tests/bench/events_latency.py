"""How long a run's transition takes to reach a client of its event stream.

Starts `llmo serve --mock` on a fresh state file, and for each of RUNS runs of a chain of
SLEEPS `wait` tasks (100 ms each, so that transitions come one at a time while a client
listens), opens `GET /runs/{id}/events` right after starting the run and reads it to the
run's end. Each transition carries `at`, the time its writer applied it (the engine's clock,
this machine's): the latency of an event is when the client read it less its `at`. Events the
stream sent from before the client connected are left out. Prints p50, p90, p99 and max in ms.

Usage: events_latency.py LLMO [RUNS] [SLEEPS]
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import time


def main():
    llmo = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    sleeps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    tasks = "\n".join(
        f"    - {{ id: s{i}, type: wait, {'depends_on: [s%d], ' % (i - 1) if i else ''}with: {{ sleep: {{ for: 100ms }} }} }}"
        for i in range(sleeps)
    )
    source = f"apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: chain }}\nspec:\n  tasks:\n{tasks}\n"
    tmp = tempfile.mkdtemp(prefix="llmo-events-bench-")
    secret = "the-events-bench-jwt-secret-of-32-bytes-or-more"
    env = dict(os.environ, LLMO_JWT_SECRET=secret)
    env.pop("LLMO_AUTH", None)
    server = subprocess.Popen([llmo, "serve", "--mock", "--state", f"{tmp}/serve.db", "--addr", "127.0.0.1:0"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        addr = None
        for line in server.stderr:
            if line.startswith("llmo serve: http://"):
                addr = line.split("http://")[1].split()[0]
                break
        token = subprocess.run([llmo, "token", "--tenant", "bench", "--role", "developer"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        host, port = addr.split(":")
        auth = {"Authorization": "Bearer " + token}
        lat = []
        for _ in range(runs):
            c = http.client.HTTPConnection(host, int(port))
            c.request("POST", "/runs", json.dumps({"source": source}), dict(auth, **{"Content-Type": "application/json"}))
            r = c.getresponse()
            body = json.loads(r.read())
            assert r.status == 201, body
            run = body["run_id"]
            c.close()
            s = http.client.HTTPConnection(host, int(port))
            s.request("GET", f"/runs/{run}/events", headers=auth)
            resp = s.getresponse()
            assert resp.status == 200, resp.status
            connected = time.time() * 1000
            event, data = None, None
            while True:
                line = resp.fp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\r\n")
                now = time.time() * 1000
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and event:
                    if event == "end":
                        break
                    if event == "transition" and data["at"] >= connected:
                        lat.append(now - data["at"])
                    event = None
            s.close()
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
        print(f"{len(lat)} events over {runs} runs: p50 {q(0.5):.1f} ms, p90 {q(0.9):.1f} ms, "
              f"p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
