"""Clicks through a `meshctl trace view --html` page in headless Chromium (Debian's chromium
and chromium-driver, driven by selenium; nothing is downloaded).

  trace_page.py PAGE.html
      Opens the page, counts the span rows, clicks the last row and reads the details it
      shows, clicks it again; prints {"rows", "hidden_before", "shown_after_click",
      "hidden_after_second_click", "details"}.
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

options = Options()
for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"):
    options.add_argument(flag)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
try:
    driver.get("file://" + sys.argv[1])
    rows = driver.find_elements(By.CSS_SELECTOR, ".row[data-span]")
    last = rows[-1]
    details = driver.find_element(
        By.ID, f"details-{last.get_attribute('data-trace')}-{last.get_attribute('data-span')}")
    hidden_before = not details.is_displayed()
    last.click()
    shown = details.is_displayed()
    text = details.text
    last.click()
    hidden_again = not details.is_displayed()
    print(json.dumps({"rows": len(rows), "hidden_before": hidden_before,
                      "shown_after_click": shown, "hidden_after_second_click": hidden_again,
                      "details": text}))
finally:
    driver.quit()
