"""Browser test of an agent's turns on the run page (issue 28), run by tests/ui/agent_page.sh.

Opens the run page `llmo run --ui` serves for a run of workflows/agents/support-agent.yaml
(its model's turns scripted by agent.fixtures.yaml) in headless Chromium and selects the agent's
task. Its panel shows the refund call of turn 2 waiting for approval (its question); the test
approves it with `llmo approve` from another process, and the page then shows the run
succeeded with three turns: the first with its two calls (names, arguments, statuses and the
start of their results), the second with the refund approved (by whom) and its result, the
third with the answer. Screenshots: target/ui/agent-waiting.png, target/ui/agent-page.png.

Usage: agent_page.py RUN_PAGE_URL LLMO STATE_DB   (the link `llmo run --ui` prints, with its token)
"""

import os
import subprocess
import sys

from playwright.sync_api import sync_playwright

OUT = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "ui")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def main():
    url, llmo, state = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.wait_for_selector("[data-task=support]", timeout=30000)
        page.locator("[data-task=support]").first.click()
        waiting = page.locator("#task-turns li.call[data-status=awaiting_approval]")
        waiting.wait_for(timeout=30000)
        asked = waiting.inner_text()
        check("issue_refund" in asked and "Refund 80 USD on order A-17" in asked, f"the call awaiting approval: {asked!r}")
        page.screenshot(path=os.path.join(OUT, "agent-waiting.png"), full_page=True)
        # The page follows the run's event stream (it does not poll).
        page.wait_for_function("document.body.dataset.live === 'stream'", timeout=10000)
        # Another process approves; the page, told by the stream, shows the run go on.
        run_id = url.split("/ui/runs/")[1].split("?")[0].split("#")[0]
        done = subprocess.run([llmo, "approve", run_id, "support", "--state", state, "-f", "note=within policy"],
                              capture_output=True, text=True)
        check(done.returncode == 0, f"llmo approve: {done.stderr}")
        page.wait_for_selector("#run-status[data-status=succeeded]", timeout=30000)
        page.locator("[data-task=support]").first.click()
        page.wait_for_selector("#task-turns li.turn[data-turn='3']", timeout=10000)
        turns = page.locator("#task-turns li.turn")
        check(turns.count() == 3, f"three turns listed, not {turns.count()}")
        refund = page.locator("#task-turns li.turn[data-turn='2'] li.call").inner_text()
        check("approved by local:" in refund and "R-1" in refund, f"the approved refund: {refund!r}")
        calls = page.locator("#task-turns li.turn[data-turn='1'] li.call")
        check(calls.count() == 2, f"two calls in turn 1, not {calls.count()}")
        first = calls.nth(0).inner_text()
        check("lookup_order" in first and "A-17" in first and "delivered" in first, f"the lookup: {first!r}")
        check(calls.nth(1).get_attribute("data-status") == "succeeded", "the policy call succeeded")
        check("eligible" in calls.nth(1).inner_text(), "the child workflow's result is shown")
        third = page.locator("#task-turns li.turn[data-turn='3']").inner_text()
        check("is refunded" in third, f"the answer: {third!r}")
        page.screenshot(path=os.path.join(OUT, "agent-page.png"), full_page=True)
        browser.close()
    print("agent page: ok (a refund call awaited approval; approved from another process; 3 turns)")


if __name__ == "__main__":
    main()
