"""Browser test of the run page (issue 13), run by `localstack/run-local.sh --smoke`.

Starts a run of workflows/article-pipeline.yaml on the local serverless system (its model
calls slowed by LLMO_MOCK_DELAY_MS so that it is seen running), opens its run page in headless
Chromium (Debian's package, driven by Playwright with the system browser), and checks:

- without a token the page asks for one (the data routes are authenticated);
- with the token, every task of the workflow is drawn, once, with the edges of its
  dependencies, while the run is still running;
- the page follows the run to its end by itself, and every task's drawn state is then the
  state the API reports;
- a click on a task shows its details; the runs list shows the run.

A screenshot of the finished run page is saved as target/ui/run-page.png (and one of the list).

Usage: run_page.py API_URL   (LLMO_TOKEN: a token of the run's tenant)
"""

import os
import time

from playwright.sync_api import sync_playwright

from browser import API, TOKEN, OUT, call, check, chromium

ENDED = {"succeeded", "failed", "cancelled", "timed_out"}


def main():
    os.makedirs(OUT, exist_ok=True)
    with open("workflows/article-pipeline.yaml") as f:
        source = f.read()
    with sync_playwright() as p:
        browser = chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{API}/ui")  # the browser warm, then the run starts
            started = call("POST", "/runs", {"source": source, "source_name": "article-pipeline.yaml",
                                             "inputs": {"topic": "Rust ownership", "languages": ["fr", "de"]}})
            run_id = started["run_id"]
            print(f"run {run_id} started")
            page.goto(f"{API}/ui/runs/{run_id}#token={TOKEN}")
            page.wait_for_selector("#dag g.node", timeout=15_000)
            check("token=" not in page.url, "the token stayed in the address bar")
            first = page.get_attribute("#run-status", "data-status")
            print(f"first drawn with the run {first}")
            check(first in ("pending", "running"), f"the run had already ended ({first}) when the page loaded")
            run = call("GET", f"/runs/{run_id}")
            ids = [t["id"] for t in run["tasks"]]
            drawn = page.eval_on_selector_all("#dag g.node", "ns => ns.map(n => n.dataset.task)")
            check(sorted(drawn) == sorted(ids), f"drawn tasks {drawn} are not the workflow's {ids}")
            edges = sum(len(t["needs"]) + len(t.get("fallback_for") or []) for t in run["tasks"])
            check(page.locator("#dag path.edge").count() == edges, "not one edge per dependency")

            # The page follows the run by itself (no reload) until it ends.
            page.wait_for_function(
                "ended => ended.includes(document.querySelector('#run-status')?.dataset.status)",
                arg=sorted(ENDED), timeout=120_000)
            end = call("GET", f"/runs/{run_id}")
            check(end["status"] in ENDED, f"the API says {end['status']}")
            shown = page.get_attribute("#run-status", "data-status")
            check(shown == end["status"], f"page shows {shown}, the API {end['status']}")
            for t in end["tasks"]:
                st = page.get_attribute(f'#dag g.node[data-task="{t["id"]}"]', "data-status")
                check(st == t["status"], f"task {t['id']}: drawn {st}, the API says {t['status']}")
            print(f"ended {shown}; every task drawn with its state: "
                  + ", ".join(f"{t['id']}={t['status']}" for t in end["tasks"]))

            target = next(t for t in end["tasks"] if t["status"] == "succeeded")
            page.click(f'#dag g.node[data-task="{target["id"]}"]')
            page.wait_for_selector(f'#task-panel[data-task="{target["id"]}"]', timeout=5_000)
            check(page.locator("#task-output").count() == 1, "a succeeded task's panel shows no output")
            page.screenshot(path=os.path.join(OUT, "run-page.png"), full_page=True)

            page.goto(f"{API}/ui")
            page.wait_for_selector(f'tr[data-run="{run_id}"]', timeout=10_000)

            # Another browser profile, no token: the page cannot read the run and asks for one.
            anon = browser.new_context().new_page()
            anon.goto(f"{API}/ui/runs/{run_id}")
            anon.wait_for_selector("#login-form", timeout=10_000)
            check(anon.locator("g.node").count() == 0, "a page without a token drew tasks")
            page.screenshot(path=os.path.join(OUT, "runs.png"))
        finally:
            browser.close()
    print(f"run page: ok (screenshots in {OUT}/)")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"{time.time() - t0:.1f}s")
