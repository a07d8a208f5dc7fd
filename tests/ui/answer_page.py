"""Browser test of an approval's single-use link (issue 14), run by `localstack/run-local.sh --smoke`.

Starts workflows/waits/approval-review.yaml on the local serverless system, waits until its
`review` task waits for an approval, takes the single-use link `GET /waiting` offers to the
(admin) caller, and opens it in headless Chromium without any token (the link is the
credential). It checks that the page shows the wait's prompt and form, answers it (a field
from the form's enum, then Approve), that the run then waits for its `payment.settled` event,
posts that event, and that the run ends with the approval recorded as given through the link.
Opening the link again shows that the task is no longer waiting (it works once).

A screenshot of the answer page is saved as target/ui/answer-page.png.

Usage: answer_page.py API_URL   (LLMO_TOKEN: a token of the run's tenant)
"""

import os
import time

from playwright.sync_api import sync_playwright

from browser import API, OUT, call, check, chromium


def waiting(run_id, task, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        for w in call("GET", "/waiting")["waiting"]:
            if w["run_id"] == run_id and w["task"] == task:
                return w
        time.sleep(0.3)
    raise SystemExit(f"FAIL: {task} of {run_id} never waited")


def main():
    os.makedirs(OUT, exist_ok=True)
    with open("workflows/waits/approval-review.yaml") as f:
        source = f.read()
    run_id = call("POST", "/runs", {"source": source, "inputs": {"order_id": "A-17"}})["run_id"]
    review = waiting(run_id, "review")
    check(review.get("link", "").startswith("/ui/answer.html#"), f"an admin is offered the link: {review}")
    with sync_playwright() as p:
        browser = chromium(p)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(API + review["link"])
            page.wait_for_selector("#answer", timeout=20000)
            check("Send this answer for order A-17?" in page.inner_text("#answer"), "the prompt is shown")
            options = page.eval_on_selector_all("#f-tone option", "os => os.map(o => o.textContent)")
            check(options == ["formal", "friendly"], f"the tone field offers its enum: {options}")
            page.select_option("#f-tone", label="friendly")
            page.fill("#comment", "looks good")
            page.screenshot(path=os.path.join(OUT, "answer-page.png"))
            page.click("#approve")
            page.wait_for_selector("#result.ok", timeout=20000)
            check("Approved" in page.inner_text("#result"), "the page confirms the approval")
            # The link works once.
            page2 = browser.new_page()
            page2.goto(API + review["link"])
            page2.wait_for_selector("#result.error", timeout=20000)
            check("not waiting" in page2.inner_text("#result"), "a used link says the task no longer waits")
        finally:
            browser.close()
    waiting(run_id, "paid")
    delivered = call("POST", "/events", {"name": "payment.settled", "key": "A-17", "payload": {"amount": 12}})
    check(len(delivered["delivered"]) == 1, f"the event reached the run: {delivered}")
    deadline = time.time() + 60
    while time.time() < deadline:
        run = call("GET", f"/runs/{run_id}")
        if run["status"] in ("succeeded", "failed", "cancelled", "timed_out"):
            break
        time.sleep(0.3)
    check(run["status"] == "succeeded", f"the run succeeded: {run.get('status')} {run.get('error')}")
    sent = run["outputs"]["sent"]
    check(sent["approved_by"] == "link" and sent["tone"] == "friendly" and sent["paid"] is True, f"outputs: {sent}")
    print(f"answer page: ok ({run_id}; screenshot {OUT}/answer-page.png)")


if __name__ == "__main__":
    main()
