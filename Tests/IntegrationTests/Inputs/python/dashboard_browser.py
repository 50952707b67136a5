"""The dashboard in a real browser: headless Chromium driven by Selenium, at 1280x800, against
a running shop (under load, so the graph has figures). Prints one JSON object of what it saw;
screenshots of each step go to SCREENSHOTS.

    dashboard_browser.py BASE_URL SCREENSHOTS

- the graph shows every service named in $DASHBOARD_SERVICES (comma-separated) and the edges
  in $DASHBOARD_EDGES (from-to, comma-separated), and no two boxes or labels overlap;
- clicking the orders->payments edge lists traces; a trace shows its spans and the log lines
  that carry its id;
- a service's page shows its methods and its latency chart over the last 15 minutes;
- the config page diffs versions 1 and 2 (the test applies the second); a tap on orders shows
  calls arriving; the trust page lists the sidecars and the rotation steps running;
- the browser's console has no errors.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, screenshots = sys.argv[1], sys.argv[2]
services = [s for s in os.environ.get("DASHBOARD_SERVICES", "").split(",") if s]
edges = [e for e in os.environ.get("DASHBOARD_EDGES", "").split(",") if e]
os.makedirs(screenshots, exist_ok=True)

options = webdriver.ChromeOptions()
for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--disable-gpu"):
    options.add_argument(argument)
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
driver = webdriver.Chrome(options=options, service=service)
driver.set_window_size(1280, 800)
result = {"steps": [], "failures": []}


def step(name):
    driver.save_screenshot(os.path.join(screenshots, f"{len(result['steps']) + 1:02d}-{name}.png"))
    result["steps"].append(name)


def wait(condition, what, seconds=30):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except TimeoutException:
        result["failures"].append(f"timed out waiting for {what}")
        step("timeout")
        return None


def click_fresh(find, what):
    """Clicks what `find` returns, finding it again if the page redrew it meanwhile (the
    views redraw themselves every two seconds)."""
    for _ in range(5):
        try:
            element = find()
            if element is None:
                break
            element.click()
            return True
        except StaleElementReferenceException:
            time.sleep(0.1)
    result["failures"].append(f"could not click {what}")
    return False


def overlaps(a, b):
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


try:
    # The graph.
    driver.get(base + "/#/")
    for name in services:
        wait(lambda d, n=name: d.find_elements(By.ID, f"node-{n}"), f"the node {name}")
    for edge in edges:
        wait(lambda d, e=edge: d.find_elements(By.ID, f"edge-{e}"), f"the edge {edge}")
    step("graph")
    boxes = driver.execute_script("""
        return [...document.querySelectorAll('#graph-svg .node')].map(g => {
          const box = g.querySelector('rect').getBoundingClientRect();
          const label = g.querySelector('text').getBoundingClientRect();
          return {name: g.id, box: {x: box.x, y: box.y, width: box.width, height: box.height},
                  label: {x: label.x, y: label.y, width: label.width, height: label.height}};
        });""")
    result["nodes"] = sorted(b["name"][len("node-"):] for b in boxes)
    for index, a in enumerate(boxes):
        inside = (a["label"]["x"] >= a["box"]["x"] - 0.5
                  and a["label"]["x"] + a["label"]["width"] <= a["box"]["x"] + a["box"]["width"] + 0.5)
        if not inside:
            result["failures"].append(f"{a['name']}'s label leaves its box: {a}")
        for b in boxes[index + 1:]:
            if overlaps(a["box"], b["box"]):
                result["failures"].append(f"{a['name']} overlaps {b['name']}")
    svg = driver.find_element(By.ID, "graph-svg").rect
    result["graph_size"] = [svg["width"], svg["height"]]

    # The orders->payments edge: its traces.
    edge = driver.find_element(By.ID, "edge-orders-payments")
    driver.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", edge)
    rows = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#traces tr.trace-row"), "traces of orders->payments")
    result["edge_hash"] = driver.execute_script("return location.hash")
    result["edge_traces"] = len(rows or [])
    step("edge-traces")

    # A trace of an order: every span.
    def order_row():
        rows = driver.find_elements(By.CSS_SELECTOR, "#traces tr.trace-row")
        return next((r for r in rows if "POST /v1/orders" in r.text), None)
    if click_fresh(order_row, "a trace of POST /v1/orders"):
        spans = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.span"), "the trace's spans")
        result["trace_spans"] = len(spans or [])
        result["trace_text"] = driver.find_element(By.ID, "trace").text[:2000]
        logs = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#trace-logs tr.log-line"),
                    "the trace's log lines")
        result["trace_log_lines"] = len(logs or [])
        click_fresh(lambda: (driver.find_elements(By.CSS_SELECTOR, "tr.span") or [None])[-1],
                    "a span")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.details"), "a span's details", 5)
        step("trace")

    # A service's page.
    driver.get(base + "/#/service/orders")
    methods = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#methods tr.link"), "orders' methods")
    result["orders_methods"] = [r.find_element(By.TAG_NAME, "td").text for r in (methods or [])]
    # Its latency over the last 15 minutes: at least one line drawn from the history.
    lines = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#latency-chart polyline.p99"),
                 "orders' latency chart")
    result["latency_lines"] = len(lines or [])
    step("service")

    # The config page: versions 1 and 2 side by side.
    driver.get(base + "/#/config?from=1&to=2")
    wait(lambda d: "+routes:" in d.find_element(By.ID, "diff").text, "the diff of versions 1 and 2")
    result["config_diff"] = driver.find_element(By.ID, "diff").text[:2000]
    step("config")

    # A tap on orders: calls arrive.
    driver.get(base + "/#/tap?service=orders")
    calls = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.tap-call"), "tapped calls")
    result["tap_calls"] = len(calls or [])
    step("tap")

    driver.get(base + "/#/trust")
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#trust-sidecars tr"), "the trust page")
    wait(lambda d: d.find_elements(By.ID, "rotations"), "the trust page's rotations")
    step("trust")

    result["console"] = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    if result["console"]:
        result["failures"].append("the console has errors")
finally:
    driver.quit()

print(json.dumps(result))
