"""End to end in headless Chromium (Debian chromium + chromium-driver, driven by Selenium):
login, answering by click and by key, resuming after a reload, changing the last answer,
logging out. Needs: apt-get install chromium chromium-driver; pip install selenium."""
from __future__ import annotations

import os
import shutil

import pytest
from _judge_helpers import LiveServer, make_testset, wait_until

from cxr_tf.judge.app import create_app

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--window-size=1200,900", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                "--disable-features=Translate,MediaRouter,OptimizationHints", "--mute-audio",
                # one process instead of browser + GPU + renderer + network: on the shared 2-core
                # test machine this makes each navigation ~3x faster
                "--single-process", "--no-zygote", "--disable-site-isolation-trials"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def test_rating_session_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ts = make_testset(tmp_path / "ts", n_2afc=3, n_jnd=2, size=32)
    app = create_app(str(ts), str(tmp_path / "j.sqlite"))
    svc = app.extensions["cxr_judge"]
    token = svc.store.add_rater("alice", order_seed=7)
    svc.store.add_rater("bob", order_seed=8)
    alice = svc.store.raters()[0]
    order = svc.order(alice)
    server = LiveServer(app)
    from selenium.common.exceptions import WebDriverException

    d = browser
    el = lambda i: d.find_element(By.ID, i)  # noqa: E731

    def settled(cond):
        """``cond`` retried until true: during a navigation an element can be missing or stale."""
        def attempt():
            try:
                return cond()
            except WebDriverException:
                return False
        return wait_until(attempt, timeout=60, step=0.1)

    def page_state():  # one round trip instead of three: polling competes with Chromium for the CPU
        return d.execute_script(
            "const s = document.getElementById('stage');"
            "return [s.dataset.item, s.dataset.ready, document.getElementById('progress-text').textContent];")

    def at_item(k, answered):
        settled(lambda: page_state() == [str(order[k]), "1", f"{answered} / 5"])

    def press(key):
        d.find_element(By.TAG_NAME, "body").send_keys(key)

    try:
        d.get(server.url + "/")
        assert d.current_url.endswith("/login")
        el("login-token").send_keys("not-a-token")
        el("login-submit").click()
        settled(lambda: el("login-error").text == "Unknown token.")
        el("login-token").send_keys(token)
        el("login-submit").click()
        wait_until(lambda: d.current_url == server.url + "/")
        settled(lambda: el("rater-name").text == "alice")

        at_item(0, 0)
        # the page really shows three decoded images for a 2AFC item
        widths = d.execute_script("return ['img-ref','img-left','img-right'].map(i => document.getElementById(i).naturalWidth)")
        assert widths == [32, 32, 32]
        assert el("img-ref").is_displayed() and not el("choice-same").is_displayed()
        el("choice-left").click()                 # click
        at_item(1, 1)
        press("2")                                # key: right
        at_item(2, 2)
        press(Keys.ARROW_LEFT)                    # key: left
        at_item(3, 3)
        assert el("stage").get_attribute("data-kind") == "jnd" and not el("ref-row").is_displayed()
        assert el("choice-same").is_displayed() and el("img-left").is_displayed()

        d.refresh()                               # a returning rater continues where they stopped
        at_item(3, 3)
        press(Keys.BACKSPACE)                     # change the last answer (item 2: left -> right)
        settled(lambda: page_state()[:2] == [str(order[2]), "1"])
        assert "selected" in el("choice-left").get_attribute("class")
        el("choice-right").click()
        at_item(3, 3)
        press("s")                                # JND by key
        at_item(4, 4)
        el("choice-different").click()            # JND by click
        settled(lambda: el("done").is_displayed() and el("progress-text").text == "5 / 5")

        expected = ["left", "right", "right", "same", "different"]
        stored = svc.store.answers(alice.id)
        assert [svc.shown(alice, i).choice_for(stored[i]) for i in order] == expected
        rows = {(r["kind"], r["id"]): r for r in svc.store.all_judgments()}
        revised = svc.item_by_id[order[2]]
        assert rows[(revised.kind, revised.id)]["revisions"] == 1
        assert all(r["rater"] == "alice" and r["response_ms"] is not None for r in rows.values())

        el("logout").click()
        wait_until(lambda: d.current_url.endswith("/login"))
        d.get(server.url + "/")
        assert d.current_url.endswith("/login")
    finally:
        server.close()
        svc.store.close()
