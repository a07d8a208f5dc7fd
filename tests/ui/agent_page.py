"""Browser test of an agent's turns on the run page (issue 28), run by tests/ui/agent_page.sh.

Opens the run page `llmo run --ui` serves for a run of workflows/agents/support-agent.yaml
(its model's turns scripted by agent.fixtures.yaml) in headless Chromium, selects the agent's
task and checks that its panel lists both turns, the first with its two calls (names,
arguments, statuses and the start of their results), the second with the answer.
A screenshot is saved as target/ui/agent-page.png.

Usage: agent_page.py RUN_PAGE_URL   (the link `llmo run --ui` prints, with its token)
"""

import os
import sys

from playwright.sync_api import sync_playwright

OUT = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "ui")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def main():
    url = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#run-status[data-status=succeeded]", timeout=30000)
        page.locator("[data-task=support]").first.click()
        page.wait_for_selector("#task-turns", timeout=10000)
        turns = page.locator("#task-turns li.turn")
        check(turns.count() == 2, f"two turns listed, not {turns.count()}")
        calls = page.locator("#task-turns li.turn[data-turn='1'] li.call")
        check(calls.count() == 2, f"two calls in turn 1, not {calls.count()}")
        first = calls.nth(0).inner_text()
        check("lookup_order" in first and "A-17" in first and "delivered" in first, f"the lookup: {first!r}")
        check(calls.nth(1).get_attribute("data-status") == "succeeded", "the policy call succeeded")
        check("eligible" in calls.nth(1).inner_text(), "the child workflow's result is shown")
        second = page.locator("#task-turns li.turn[data-turn='2']").inner_text()
        check("can be refunded" in second, f"the answer: {second!r}")
        page.screenshot(path=os.path.join(OUT, "agent-page.png"), full_page=True)
        browser.close()
    print("agent page: ok (2 turns, 2 calls)")


if __name__ == "__main__":
    main()
