"""The console in a real browser (headless Chromium) against the real stack (``fed_stack``:
service, Valkey, an endpoint on a Dask LocalCluster). Each test saves screenshots of the
pages it visits under ``tests/console/screenshots/``."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from fedcompute import errors
from fedcompute.protocol import API_VERSION

from tests.reliability.helpers import report

pytestmark = pytest.mark.timeout(900)

XSS = "<script>alert(1)</script>"
XSS_IMG = '<img src=x onerror="document.title=\'pwned\'">'
# Recorded instead of shown, so that a script that got through would be seen even where a
# dialog would not be (injected by DevTools before any page script runs).
RECORD_ALERTS = """
window.__alerts = [];
for (const name of ['alert', 'confirm', 'prompt']) {
  const original = window[name].bind(window);
  window[name] = (...args) => { window.__alerts.push([name, String(args[0])]);
                                return name === 'confirm' ? original(...args) : undefined; };
}
"""


def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def explode(x: int) -> int:
    raise ValueError(f"bad input {x!r} <b>not bold</b>")


def identity(x: int) -> int:
    return x


def _run_batch(client, endpoint_id: str, function_id: str, args: list) -> tuple[str, list]:
    batch = client.create_batch(task_group_id=str(uuid.uuid4()))
    ids = [batch.add(function_id, (a,)) for a in args]
    reply = client.batch_run(endpoint_id, batch)
    return reply["task_group_id"], ids


def _wait_done(client, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id)
        if not task["pending"]:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish")


def _percent(browser) -> float:
    return float(browser.text("#progress-pct").rstrip("%"))


def test_sign_in_endpoints_and_sign_out(browser, fed_stack):
    browser.get("/console/groups")
    assert browser.path() == "/console/login?next=/console/groups"
    browser.shot("login")
    browser.find("#token").send_keys("fcu_wrong")
    browser.find("#login button[type=submit]").click()
    assert "not valid" in browser.wait(lambda: browser.text("#login-error"))
    browser.find("#token").send_keys(fed_stack.token)  # the form still knows where to go
    browser.find("#login button[type=submit]").click()
    browser.wait(lambda: browser.path() == "/console/groups", 30, "the page asked for")
    cookie = browser.driver.get_cookie("fc_console")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False and cookie["path"] == "/console"  # plain HTTP here

    browser.get("/console/endpoints")
    row = f'tr[data-endpoint-id="{fed_stack.endpoint_id}"]'
    browser.wait(lambda: browser.find(row).text)
    text = browser.find(row).text
    assert "local" in text and "online" in text
    assert "dask" in text and "fedcompute" in text  # versions from the heartbeat's details
    assert browser.find(f"{row} td.num").text == "2"  # workers
    browser.shot("endpoints")
    browser.find(f"{row} a").click()
    browser.wait(lambda: browser.text("#endpoint-name") == "local")
    assert "distributed" in browser.text("#versions")
    browser.shot("endpoint")

    browser.sign_out()
    browser.get("/console/endpoints")
    assert browser.path().startswith("/console/login")


def test_group_progress_to_done_without_reloading(browser, fed_stack):
    client = fed_stack.client()
    fid = client.register_function(pause)
    group, _ = _run_batch(client, fed_stack.endpoint_id, fid, [0.01] * 2000)
    browser.sign_in(fed_stack.token)
    browser.get(f"/console/groups/{group}")
    browser.js("window.__samePage = 'yes'")
    seen = {_percent(browser)}
    start = time.monotonic()

    def finished() -> bool:
        seen.add(_percent(browser))
        return _percent(browser) == 100.0

    browser.wait(finished, 300, "the bar to reach 100%")
    took = time.monotonic() - start
    assert browser.js("return window.__samePage") == "yes"  # no reload happened
    assert min(seen) < 100.0 and len(seen) >= 3, seen  # it moved while we watched
    assert browser.text("#done-count") == "2,000"
    assert browser.find('[data-count="success"]').text == "2,000"
    assert browser.wait(lambda: browser.text("#live-status") == "done")
    assert browser.wait(lambda: browser.find_all("#throughput rect.bar-ok"))
    assert browser.find_all("#durations rect.bar-ok")
    assert "All 2,000 finished tasks" in browser.text("#throughput-caption")
    assert len(browser.find_all("#tasks tbody tr")) == 50
    browser.wait(lambda: {r.get_attribute("data-state") for r in
                          browser.find_all("#tasks tbody tr")} == {"success"}, 30,
                 "the task list to follow")  # refreshed in place too
    assert browser.find("#tasks tbody tr .task-duration").text.endswith(("ms", "s"))
    browser.shot("group")
    print(f"\n2,000 tasks watched to done in {took:.1f} s; bar values seen: {len(seen)}")

    browser.find('.pager a[rel="next"]').click()
    browser.wait(lambda: "offset=50" in browser.path())
    assert browser.find("#tasks tbody tr td.num").text == "51"
    browser.get("/console/groups")
    assert browser.find(f'tr[data-group-id="{group}"]').text.count("2,000") >= 1
    browser.shot("groups")


def test_failed_task_shows_its_traceback(browser, fed_stack):
    client = fed_stack.client()
    fid = client.register_function(explode)
    task_id = client.run(7, endpoint_id=fed_stack.endpoint_id, function_id=fid)
    assert _wait_done(client, task_id)["status"] == "failed"
    browser.sign_in(fed_stack.token)
    browser.get(f"/console/tasks/{task_id}")
    assert "ValueError" in browser.text("#exception-type")
    assert browser.text("#exception-message") == "bad input 7 <b>not bold</b>"
    traceback = browser.text("#traceback")
    assert "Traceback (most recent call last)" in traceback
    assert "in explode" in traceback and "raise ValueError" in traceback
    assert not browser.find_all("#exception b")  # shown as text, not markup
    states = [li.get_attribute("data-state") for li in browser.find_all("#timeline li")]
    assert states[0] == "received" and "running" in states and "failed" in states
    browser.shot("task-failed")


def test_cancel_a_group(browser, fed_stack):
    # One worker, at most 2 tasks at the endpoint at a time: the others wait in the service.
    slow = fed_stack.start_endpoint("console-slow", engine={"type": "local", "workers": 1},
                                    max_outstanding=2, max_tasks_per_lease=2)
    try:
        client = fed_stack.client()
        fid = client.register_function(pause)
        group, ids = _run_batch(client, slow, fid, [1.0] * 30)
        browser.sign_in(fed_stack.token)
        browser.get(f"/console/groups/{group}")
        browser.wait(lambda: int(browser.find('[data-count="running"]').text) > 0, 120,
                     "a task to start")
        browser.shot("group-before-cancel")
        browser.find("#cancel-group button").click()
        assert "not ended yet" in browser.accept_dialog()
        flash = browser.wait(lambda: browser.text("#flash"))
        cancelled = int(flash.split()[1])
        assert 20 <= cancelled <= 29, flash
        browser.wait(lambda: _percent(browser) == 100.0, 120, "every task to be final")
        # Those the endpoint held were stopped there, unless they had finished first.
        shown = int(browser.find('[data-count="cancelled"]').text)
        assert cancelled <= shown <= 30, (flash, shown)
        assert int(browser.find('[data-count="success"]').text) == 30 - shown
        browser.wait(lambda: {r.get_attribute("data-state") for r in
                              browser.find_all("#tasks tbody tr")} == {"success", "cancelled"},
                     30, "the task list to follow")
        browser.shot("group-cancelled")
        states = {client.get_task(t)["status"] for t in ids}
        assert states == {"success", "cancelled"}
        last = client.get_task(ids[-1])
        assert last["status"] == "cancelled"
        assert isinstance(last["exception"], errors.TaskCancelled)
    finally:
        fed_stack.stop_endpoint("console-slow")


def test_another_user_sees_nothing_of_alices(browser, fed_stack):
    alice = fed_stack.client()
    fid = alice.register_function(identity)
    group, (task_id,) = _run_batch(alice, fed_stack.endpoint_id, fid, [5])
    _wait_done(alice, task_id)
    bob = f"bob-{uuid.uuid4().hex[:6]}"
    bob_token = fed_stack.create_user(bob)
    browser.sign_in(bob_token)

    for page, attr in (("endpoints", "data-endpoint-id"), ("groups", "data-group-id"),
                       ("functions", "data-function-id")):
        browser.get(f"/console/{page}")
        assert not browser.find_all(f"[{attr}]"), page
        assert fed_stack.endpoint_id not in browser.driver.page_source
    urls = [f"/console/endpoints/{fed_stack.endpoint_id}", f"/console/functions/{fid}",
            f"/console/groups/{group}", f"/console/tasks/{task_id}",
            f"/console/tasks/{task_id}/result"]
    for url in urls:
        browser.get(url)
        assert browser.text("#error-code").startswith("404"), url
    browser.shot("isolation-404")
    with browser.http() as http:
        for url in [*urls, f"/console/groups/{group}/stats", f"/console/groups/{group}/events"]:
            assert http.get(url).status_code == 404, url
        browser.get("/console/tokens")
        csrf = browser.find('input[name="csrf"]').get_attribute("value")
        for url in (f"/console/groups/{group}/cancel", f"/console/tasks/{task_id}/cancel",
                    f"/console/functions/{fid}/sharing",
                    f"/console/endpoints/{fed_stack.endpoint_id}/sharing"):
            assert http.post(url, data={"csrf": csrf, "op": "public"}).status_code == 404, url
        # Without a session: the sign-in page, or 401 for what scripts read.
        anonymous = httpx.Client(base_url=fed_stack.service_url, follow_redirects=False)
        assert anonymous.get(f"/console/groups/{group}").status_code == 302
        assert anonymous.get(f"/console/groups/{group}/stats").status_code == 401
        anonymous.close()
    browser.sign_out()

    # alice shares the function with bob from its page; bob may then see it (not change it).
    browser.sign_in(fed_stack.token)
    browser.get(f"/console/functions/{fid}")
    browser.find('#share-add input[name="user"]').send_keys(bob)
    browser.find("#share-add button").click()
    assert f"now shared with {bob}" in browser.wait(lambda: browser.text("#flash"))
    assert bob in browser.text("#shared-with")
    browser.shot("function-shared")
    browser.sign_out()
    browser.sign_in(bob_token)
    browser.get(f"/console/functions/{fid}")
    assert browser.text("#function-name") == "identity"
    assert not browser.find_all("#share-add")
    browser.get(f"/console/groups/{group}")
    assert browser.text("#error-code").startswith("404")  # the group is still alice's alone


def test_script_in_a_function_name_is_only_text(browser, fed_stack):
    client = fed_stack.client()
    fid = client.register_function(identity, function_name=XSS, description=XSS_IMG)
    group, (task_id,) = _run_batch(client, fed_stack.endpoint_id, fid, [1])
    _wait_done(client, task_id)
    browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                   {"source": RECORD_ALERTS})
    browser.sign_in(fed_stack.token)
    pages = {"functions": ("/console/functions", f'tr[data-function-id="{fid}"] a.fn'),
             "function-xss": (f"/console/functions/{fid}", "#function-name"),
             "group-xss": (f"/console/groups/{group}", "#tasks a.fn"),
             "task-xss": (f"/console/tasks/{task_id}", "#task-function")}
    for name, (url, selector) in pages.items():
        browser.get(url)
        assert browser.text(selector) == XSS, url
        assert browser.alert_text() is None, url
        assert browser.js("return window.__alerts") == [], url
        assert browser.driver.title != "pwned"
        # The only scripts are the console's own file; the name made no element.
        sources = browser.js("return [...document.scripts].map(s => s.src)")
        assert len(sources) == 1 and sources[0].endswith("/console/static/console/console.js")
        assert not browser.js("return document.querySelector('main img, main script')")
        browser.shot(name)
    browser.get("/console/functions")
    assert XSS_IMG in browser.find(f'tr[data-function-id="{fid}"]').text


def test_tokens_list_and_revoke(browser, fed_stack):
    carol = f"carol-{uuid.uuid4().hex[:6]}"
    token = fed_stack.create_user(carol)
    spare = fed_stack.create_user(carol)
    browser.sign_in(token)
    browser.get("/console/tokens")
    rows = browser.find_all("#tokens tbody tr")
    assert len(rows) == 2 and "this session" in browser.text("#tokens")
    assert token not in browser.driver.page_source and spare not in browser.driver.page_source
    browser.shot("tokens")
    with httpx.Client(base_url=fed_stack.service_url) as http:
        whoami = http.get(f"/{API_VERSION}/whoami", headers={"Authorization": f"Bearer {spare}"})
        assert whoami.status_code == 200
        spare_row = [r for r in rows if "this session" not in r.text][0]
        short = spare_row.get_attribute("data-token-id")
        spare_row.find_element("css selector", "button").click()
        assert f"Revoke token {short}?" in browser.accept_dialog()
        assert "revoked" in browser.wait(lambda: browser.text("#flash"))
        assert len(browser.find_all("#tokens tbody tr")) == 1
        whoami = http.get(f"/{API_VERSION}/whoami", headers={"Authorization": f"Bearer {spare}"})
        assert whoami.status_code == 401
        assert http.get(f"/{API_VERSION}/whoami", headers={"Authorization": f"Bearer {token}"}
                        ).status_code == 200


def _navigation_ms(browser) -> dict:
    timing = browser.js("const t = performance.getEntriesByType('navigation')[0];"
                        "return [t.requestStart, t.responseEnd, t.domContentLoadedEventEnd];")
    return {"response": round(timing[1] - timing[0], 1),
            "dom_ready": round(timing[2] - timing[0], 1)}


@pytest.mark.slow
def test_a_100k_task_group_in_the_browser(browser, fed_stack):
    """100,000 tasks queued for an endpoint that never runs them: page times through the
    real service (gunicorn) and Chromium, then the whole group cancelled from the page."""
    client = fed_stack.client()
    idle = client.register_endpoint("console-idle")["endpoint_id"]  # no agent: tasks wait
    fid = client.register_function(identity)
    group = str(uuid.uuid4())
    for _ in range(10):  # the service takes at most 20,000 tasks per request
        batch = client.create_batch(task_group_id=group)
        for _ in range(10_000):
            batch.add(fid, (1,))
        client.batch_run(idle, batch)
    browser.sign_in(fed_stack.token)
    with browser.http() as http:  # big batches are written by the RQ worker: wait for it
        browser.wait(lambda: http.get(f"/console/groups/{group}/rows",
                                      params={"offset": 99_999, "limit": 1}).json()["tasks"],
                     300, "the 100,000 tasks to be written")
    timings: dict[str, float] = {}
    for name, url in (("group", f"/console/groups/{group}"),
                      ("group_last_page", f"/console/groups/{group}?offset=99950"),
                      ("groups", "/console/groups"), ("endpoints", "/console/endpoints")):
        best: dict[str, float] = {}
        for _ in range(3):
            browser.get(url)
            for k, v in _navigation_ms(browser).items():
                best[k] = min(best.get(k, v), v)
        timings.update({f"{name}_{k}": v for k, v in best.items()})
    browser.get(f"/console/groups/{group}")
    assert browser.text("#size-count") == "100,000"
    assert browser.wait(lambda: "per second" in browser.text("#throughput-caption"))  # loaded
    stats = browser.js("return performance.getEntriesByType('resource')"
                       ".filter(e => e.name.includes('/stats'))[0].duration")
    timings["stats_fetch"] = round(stats, 1)
    browser.shot("group-100k")
    start = time.monotonic()
    while browser.find_all("#cancel-group button"):  # each press cancels for up to 20 s
        browser.find("#cancel-group button").click()
        browser.accept_dialog()
        browser.wait(lambda: browser.text("#flash").startswith("Cancelled"), 120)
    timings["cancel_100k_s"] = round(time.monotonic() - start, 1)
    browser.wait(lambda: browser.find('[data-count="cancelled"]').text == "100,000", 60)
    browser.get("/console/endpoints")  # by now: local, and the idle and slow ones offline
    browser.shot("endpoints-several")
    report("console in Chromium, 100k-task group (ms unless _s)", **timings)
    assert timings["group_response"] < 2000 and timings["group_last_page_response"] < 2000


# What a Bokeh page shows: the keys in the task stream's data (after the page's websocket
# brought them), or null before its documents are there.
TASK_STREAM_KEYS = """
const docs = (window.Bokeh && window.Bokeh.documents) || [];
let stream = null;
for (const doc of docs) {
  for (const model of doc.all_models) {
    if (typeof model.get_column === 'function' && model.get_column('duration_text')
        && model.get_column('worker_thread')) {
      stream = (stream || []).concat(Array.from(model.get_column('key')));
    }
  }
}
return stream;
"""


def test_dask_dashboard_of_a_federated_cluster(browser, fed_stack):
    """The endpoint's Bokeh dashboard in the browser, through the service: signed in to the
    console, the task stream fills with the tasks a ``Client(FederatedCluster(...))`` runs
    (over the dashboard's relayed websocket); other origins cannot open its websockets."""
    from distributed import Client
    from fedcompute.plugins.dask import FederatedCluster

    def dashboard_marker(x):
        time.sleep(0.05)
        return x

    browser.sign_in(fed_stack.token)
    with FederatedCluster(fed_stack.endpoint_id, fed_stack.client()) as cluster, \
            Client(cluster) as client:
        link = cluster.dashboard_link
        assert link.startswith(fed_stack.service_url + "/console/dashboard/")
        started = time.monotonic()
        browser.get(f"/console/endpoints/{fed_stack.endpoint_id}")  # the console links to it
        browser.find("#dask-dashboard").click()
        browser.wait(lambda: browser.driver.current_url == link, 60, "the dashboard page")
        before = browser.wait(lambda: browser.js(TASK_STREAM_KEYS), 120, "the task stream")
        opened = time.monotonic() - started
        assert "dashboard_marker" not in before
        assert client.gather(client.map(dashboard_marker, range(40))) == list(range(40))
        keys = browser.wait(lambda: [k for k in browser.js(TASK_STREAM_KEYS)
                                     if "dashboard_marker" in k], 60,
                            "the tasks in the task stream")
        assert len(keys) >= 10  # live updates arrived over the relayed websocket
        assert browser.driver.title.startswith("Dask")
        browser.shot("dask-dashboard")
        print(f"\ndashboard opened in {opened:.1f} s; task stream rectangles: {len(keys)}")

        # The session cookie reaches the dashboard, but another site's page cannot open its
        # websockets with it; without a session the page asks to sign in.
        http = browser.http()
        path = link.removeprefix(fed_stack.service_url)
        assert http.get(path).status_code == 200
        ws_headers = {"Connection": "Upgrade", "Upgrade": "websocket",
                      "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        socket_path = path.replace("/status", "/status/ws")
        refused = http.get(socket_path, headers={**ws_headers, "Origin": "http://evil.example"})
        assert refused.status_code == 403, refused.text
        assert httpx.get(fed_stack.service_url + path).status_code == 302
