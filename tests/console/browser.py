"""A headless Chromium for the console tests (Debian's ``chromium`` and ``chromium-driver``,
driven through selenium), on a fresh profile, with the network features that would try to
reach the internet turned off."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1360,900")


class Browser:
    """One Chromium session against the service at ``base``."""

    def __init__(self, base: str, profile: Path, screenshots: Path):
        self.base = base.rstrip("/")
        self.profile = profile
        self.screenshots = screenshots
        self.driver: webdriver.Chrome | None = None

    def __enter__(self) -> Browser:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        # Dialogs stay open until the test handles them (an unexpected alert must be seen).
        options.set_capability("unhandledPromptBehavior", "ignore")
        self.driver = webdriver.Chrome(options=options, service=Service(DRIVER))
        self.driver.set_page_load_timeout(60)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.driver is not None:
            self.driver.quit()

    # --- navigation ------------------------------------------------------------------------

    def get(self, path: str) -> None:
        self.driver.get(self.base + path)

    def path(self) -> str:
        return self.driver.current_url.removeprefix(self.base)

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.find(css).text

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = condition()
            except Exception as exc:  # noqa: BLE001 - e.g. the element is not there yet
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or condition}: last {last!r}")

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot as ``<name>.png``."""
        height = self.js("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1360, max(900, min(int(height) + 40, 4000)))
        path = self.screenshots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1360, 900)
        return path

    def alert_text(self) -> str | None:
        """The text of an open dialog (and dismiss it), or None."""
        try:
            alert = self.driver.switch_to.alert
        except NoAlertPresentException:
            return None
        text = alert.text
        alert.dismiss()
        return text

    def accept_dialog(self, timeout: float = 10.0) -> str:
        """Accept the confirmation dialog that the last click opened."""
        alert = self.wait(lambda: self.driver.switch_to.alert, timeout, "a dialog")
        text = alert.text
        alert.accept()
        return text

    # --- sessions --------------------------------------------------------------------------

    def sign_in(self, token: str) -> None:
        self.get("/console/login")
        self.find("#token").send_keys(token)
        self.find("#login button[type=submit]").click()
        self.wait(lambda: "/console/login" not in self.path(), 30, "signing in")

    def sign_out(self) -> None:
        self.find("form.signout button").click()
        self.wait(lambda: "/console/login" in self.path(), 30, "signing out")

    def http(self) -> httpx.Client:
        """An HTTP client carrying this browser's cookies (to check status codes)."""
        cookies = {c["name"]: c["value"] for c in self.driver.get_cookies()}
        return httpx.Client(base_url=self.base, cookies=cookies, follow_redirects=False,
                            timeout=30)
