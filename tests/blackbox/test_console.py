"""The web console (issue 21.3) in headless Chromium driven by selenium, against the real binary and a real
FerretDB: login with an AccessKey, a real instance and backup on the pages, a backup started from the console
followed to Success, the policy changed, the audit rows; refusals for a key without permissions, a wrong secret,
a POST without the CSRF token, and too many failed logins; the restore drill page with a drill started from it
(passed) and one of a damaged backup (failed, the backup unverified); a logout and a failed-login lockout holding on
a second process sharing the catalog. Screenshots of the main pages go to docs/console/."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import (DENIED_AK, OPERATOR_AK, REPO, ROOT_AK, Ddsvault, config_text, seed_data, skip_or_fail,
                      tea_client, wait_backup)
from test_drills import call as api_call

# The screenshots in docs/console/ are refreshed only when asked (DDSVAULT_SCREENSHOTS=1), so a test run leaves
# the checkout unchanged; otherwise they go to a scratch directory (still taken: a page that cannot render fails).
SHOTS = (REPO / "docs" / "console") if os.environ.get("DDSVAULT_SCREENSHOTS") == "1" else Path(
    tempfile.gettempdir()) / "ddsvault-console-shots"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def _chromium() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        skip_or_fail("headless Chromium (Debian packages chromium, chromium-driver) is not installed: "
                     "run scripts/setup-stack.sh")
    return browser, driver


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("console")
    rs1 = stack.FerretDB(base / "rs1", repl_set_name="rs0")
    other = stack.FerretDB(base / "other", repl_set_name="rs0")
    seed_data(rs1.client())
    server = Ddsvault(base / "ddsvault", config_text(base / "data", {
        "dds-rs1": (rs1.uri, "local_ssd"), "dds-other": (other.uri, "local_ssd")}))
    tea = tea_client(server)
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs1", backup_method="Logical")).body
    first = wait_backup(tea, "dds-rs1", job.backup_job_id)
    assert first.backup_status == "Success", first
    yield server, tea, first, base / "data" / "repository"
    server.stop()
    rs1.stop()
    other.stop()


def _new_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def browser():
    d = _new_driver()
    yield d
    d.quit()


def base(server: Ddsvault) -> str:
    return f"http://{server.endpoint}/console"


def click_and_wait(d, element):
    """Clicks a link or submit button and waits until the page it leads to has replaced this one, so what is read
    next is the answer, not the page the click was made on (reading too early raced in CI)."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import WebDriverException

    def gone(_):
        # Chromium sometimes reports a replaced node as "does not belong to the document" rather than stale.
        try:
            return ec.staleness_of(element)(d)
        except WebDriverException:
            return True

    element.click()
    WebDriverWait(d, 30).until(gone)


def login(d, server, ak):
    from selenium.webdriver.common.by import By

    d.get(base(server) + "/login")
    d.find_element(By.ID, "access_key_id").send_keys(ak[0])
    d.find_element(By.ID, "access_key_secret").send_keys(ak[1])
    # Wait for the answer page to replace the form before anyone reads it.
    click_and_wait(d, d.find_element(By.ID, "login"))


def text(d) -> str:
    """The page's text once the page has settled: a read that races a page still being replaced (the element it
    found left the document) is retried, up to 10 s."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 10
    while True:
        try:
            return d.find_element(By.TAG_NAME, "body").text
        except (StaleElementReferenceException, WebDriverException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def shot(d, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def test_console_shows_real_backups_starts_one_changes_the_policy_and_audits(env, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, tea, first, _ = env
    d = browser
    login(d, server, ROOT_AK)
    assert d.current_url.endswith("/console/instances"), d.current_url
    table = d.find_element(By.ID, "instances").text
    assert "dds-rs1" in table and "dds-other" in table
    # The last backup column shows the backup taken through the SDK.
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#instances tr") if "dds-rs1" in r.text)
    assert "Success" in row.text and "Logical" in row.text and first.backup_start_time in row.text, row.text
    shot(d, "instances")

    click_and_wait(d, d.find_element(By.LINK_TEXT, "dds-rs1"))
    rows = {r.get_attribute("data-id"): r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.backup")}
    assert first.backup_id in rows and "Success" in rows[first.backup_id], rows
    assert "Logical" in rows[first.backup_id]
    assert d.find_element(By.ID, "lock").text == "Disabled"
    shot(d, "backups")

    # Start a backup from the console and follow it to the end on the live jobs page.
    Select(d.find_element(By.ID, "method")).select_by_visible_text("Logical")
    click_and_wait(d, d.find_element(By.ID, "start"))
    assert "/console/instances/dds-rs1/jobs?job=" in d.current_url, d.current_url
    job_id = d.current_url.rsplit("=", 1)[1]
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        try:
            state = d.find_element(By.CSS_SELECTOR, f'tr.job[data-id="{job_id}"] .state').text
        except Exception:  # noqa: BLE001 - the page is reloading itself
            state = ""
        if state in ("Success", "Failed"):
            break
        time.sleep(0.5)
    assert state == "Success", text(d)
    assert "100%" in d.find_element(By.CSS_SELECTOR, f'tr.job[data-id="{job_id}"]').text
    shot(d, "jobs")
    # The same job seen through the API: a real, finished backup.
    done = wait_backup(tea, "dds-rs1", job_id, timeout=30)
    assert done.backup_status == "Success" and done.backup_method == "Logical"
    d.get(base(server) + "/instances/dds-rs1/backups")
    assert done.backup_id in [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.backup")]

    # A download URL for the new backup (the action is DescribeBackups with its BackupId, audited).
    row = d.find_element(By.CSS_SELECTOR, f'tr.backup[data-id="{done.backup_id}"]')
    click_and_wait(d, row.find_element(By.CSS_SELECTOR, "button.download"))
    links = d.find_elements(By.ID, "download-url")
    if links:
        assert f"/download/{done.backup_id}/" in links[0].get_attribute("href")
    else:
        assert "no download URL" in text(d)

    # Change the policy through the form; the API reads back the change.
    d.get(base(server) + "/instances/dds-rs1/policy")
    for box in d.find_elements(By.CSS_SELECTOR, 'input[name="day"]'):
        if box.is_selected() != (box.get_attribute("value") in ("Monday", "Thursday")):
            box.click()
    for field, value in (("PreferredBackupTime", "03:00Z-04:00Z"), ("BackupRetentionPeriod", "14")):
        el = d.find_element(By.CSS_SELECTOR, f"input#{field}")
        el.clear()
        el.send_keys(value)
    click_and_wait(d, d.find_element(By.ID, "save-policy"))
    assert d.find_element(By.ID, "saved")
    assert d.find_element(By.CSS_SELECTOR, "td#pol-PreferredBackupPeriod").text == "Monday,Thursday"
    assert d.find_element(By.CSS_SELECTOR, "td#pol-BackupRetentionPeriod").text == "14"
    shot(d, "policy")
    pol = tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-rs1")).body
    assert (pol.preferred_backup_period, pol.preferred_backup_time, str(pol.backup_retention_period)) == (
        "Monday,Thursday", "03:00Z-04:00Z", "14")

    # A bad value is refused with the action's own error, and nothing changes.
    el = d.find_element(By.CSS_SELECTOR, "input#BackupRetentionPeriod")
    el.clear()
    el.send_keys("3")
    click_and_wait(d, d.find_element(By.ID, "save-policy"))
    assert "Refused" in d.find_element(By.ID, "refused").text
    pol = tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-rs1")).body
    assert str(pol.backup_retention_period) == "14"

    # The audit trail shows the console's actions with this key.
    d.get(base(server) + "/audit")
    rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
            for r in d.find_elements(By.CSS_SELECTOR, "tr.audit-row")]
    for action in ("ConsoleLogin", "CreateBackup", "ModifyBackupPolicy", "DescribeBackups"):
        assert any(r[3] == action and r[1] == ROOT_AK[0] and r[7] == "200" for r in rows), (action, rows[:10])
    refused = [r for r in rows if r[3] == "ModifyBackupPolicy" and r[7] != "200"]
    assert refused and refused[0][8], rows[:10]
    create = next(r for r in rows if r[3] == "CreateBackup")
    assert create[4].endswith("dbinstance/dds-rs1") and create[5] == "127.0.0.1", create
    shot(d, "audit")

    # Restore the first backup into the other instance from the console.
    d.get(base(server) + "/instances/dds-rs1/backups")
    row = d.find_element(By.CSS_SELECTOR, f'tr.backup[data-id="{first.backup_id}"]')
    Select(row.find_element(By.NAME, "target")).select_by_visible_text("dds-other")
    click_and_wait(d, row.find_element(By.CSS_SELECTOR, "button.restore"))
    assert d.current_url.endswith("/console/instances/dds-other/jobs"), d.current_url
    deadline = time.monotonic() + 180
    status = ""
    while time.monotonic() < deadline:
        cells = d.find_elements(By.CSS_SELECTOR, "tr.restore-job")
        try:
            status = cells[0].text if cells else ""
        except Exception:  # noqa: BLE001 - reloading
            status = ""
        if "Success" in status or "Failed" in status:
            break
        time.sleep(0.5)
    assert "Success" in status, text(d)

    # Logout ends the session: the pages send back to the login form.
    click_and_wait(d, d.find_element(By.ID, "logout"))
    d.get(base(server) + "/instances")
    assert d.current_url.endswith("/console/login")


def wait_drill_row(d, server, job_id: str, timeout: float = 180.0):
    """Follows the drill page (it reloads itself while the drill runs) until the drill of `job_id` is recorded."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = d.find_elements(By.CSS_SELECTOR, f'tr.drill[data-job="{job_id}"]')
            if rows:
                return rows[0].text
            failed = d.find_elements(By.CSS_SELECTOR, "#drill-job.refused")
            if failed:
                return failed[0].text
        except Exception:  # noqa: BLE001 - the page is reloading itself
            pass
        time.sleep(0.5)
    raise AssertionError(f"drill job {job_id} not shown within {timeout}s: {text(d)}")


def test_drill_page_shows_the_policy_starts_a_drill_and_shows_failed_ones(env, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, tea, first, repo = env
    d = browser
    api_call(server, "ModifyBackupPolicy", DBInstanceId="dds-rs1", RestoreDrillTarget="dds-other",
             RestoreDrillPeriod="Disabled")
    login(d, server, ROOT_AK)
    d.get(base(server) + "/instances/dds-rs1/drills")
    assert d.find_element(By.ID, "drill-RestoreDrillTarget").text == "dds-other"
    assert d.find_element(By.ID, "drill-RestoreDrillPeriod").text == "Disabled"

    # Start a drill of the first backup from the page, into the policy's target, and follow it to its result.
    Select(d.find_element(By.ID, "drill-backup")).select_by_value(first.backup_id)
    click_and_wait(d, d.find_element(By.ID, "drill"))
    assert "/console/instances/dds-rs1/drills?job=" in d.current_url, d.current_url
    job_id = d.current_url.rsplit("=", 1)[1]
    row_text = wait_drill_row(d, server, job_id)
    row = d.find_element(By.CSS_SELECTOR, f'tr.drill[data-job="{job_id}"]')
    assert row.get_attribute("data-backup") == first.backup_id, row_text
    assert row.find_element(By.CSS_SELECTOR, ".result").text == "Passed", row_text
    assert "CountsAndChecksums" in row_text and "dds-other" in row_text and " s" in row_text, row_text
    assert "documents as recorded" in row.find_element(By.CSS_SELECTOR, ".why").text, row_text
    # The same drill through the API.
    (api,) = api_call(server, "DescribeRestoreDrills", DBInstanceId="dds-rs1",
                      BackupId=first.backup_id)["RestoreDrills"]["RestoreDrill"]
    assert (api["Result"], api["DrillJobId"]) == ("Passed", job_id), api

    # A backup whose archive is damaged in the repository: its drill fails, says why, and the page lists the
    # backup as unverified.
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs1", backup_method="Logical")).body
    bad = wait_backup(tea, "dds-rs1", job.backup_job_id)
    assert bad.backup_status == "Success", bad
    archive = next((repo / "backups" / "dds-rs1" / bad.backup_id).glob("archive*"))
    original = archive.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    archive.write_bytes(bytes(damaged))
    try:
        d.get(base(server) + "/instances/dds-rs1/drills")
        Select(d.find_element(By.ID, "drill-backup")).select_by_value(bad.backup_id)
        Select(d.find_element(By.ID, "drill-target")).select_by_visible_text("dds-other")
        click_and_wait(d, d.find_element(By.ID, "drill"))
        bad_job = d.current_url.rsplit("=", 1)[1]
        wait_drill_row(d, server, bad_job)
    finally:
        archive.write_bytes(original)
    d.get(base(server) + "/instances/dds-rs1/drills")
    row = d.find_element(By.CSS_SELECTOR, f'tr.drill[data-job="{bad_job}"]')
    assert row.get_attribute("data-backup") == bad.backup_id
    assert row.find_element(By.CSS_SELECTOR, ".result").text == "Failed", row.text
    assert "restore:" in row.find_element(By.CSS_SELECTOR, ".why").text and "sha256" in row.text, row.text
    assert bad.backup_id in [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.unverified")]
    assert first.backup_id not in [r.get_attribute("data-id")
                                   for r in d.find_elements(By.CSS_SELECTOR, "tr.unverified")]
    shot(d, "drills")

    # The backups page and the instances page show the drill status too.
    d.get(base(server) + "/instances/dds-rs1/backups")
    status = {r.get_attribute("data-id"): r.find_element(By.CSS_SELECTOR, ".drill-status").text
              for r in d.find_elements(By.CSS_SELECTOR, "tr.backup")}
    assert (status[first.backup_id], status[bad.backup_id]) == ("Verified", "Unverified"), status
    d.get(base(server) + "/instances")
    row = next(r for r in d.find_elements(By.CSS_SELECTOR, "#instances tr") if "dds-rs1" in r.text)
    assert f"Failed: backup {bad.backup_id}" in row.find_element(By.CSS_SELECTOR, ".drill").text, row.text

    # Starting a drill is audited, with the drilled instance and its target as resources.
    d.get(base(server) + "/audit?action=StartRestoreDrill")
    rows = [[td.text for td in r.find_elements(By.TAG_NAME, "td")]
            for r in d.find_elements(By.CSS_SELECTOR, "tr.audit-row")]
    assert len(rows) >= 2 and all(r[7] == "200" for r in rows), rows
    assert "dbinstance/dds-rs1" in rows[0][4] and "dbinstance/dds-other" in rows[0][4], rows[0]


def test_a_drill_form_without_csrf_or_permission_starts_nothing(env, browser):
    from selenium.webdriver.common.by import By

    server, _, first, _ = env
    d = browser
    login(d, server, ROOT_AK)
    before = len(api_call(server, "DescribeRestoreDrills", DBInstanceId="dds-rs1")["RestoreDrills"]["RestoreDrill"])
    d.get(base(server) + "/instances/dds-rs1/drills")
    d.execute_script('document.querySelector("#start-drill input[name=csrf]").remove()')
    click_and_wait(d, d.find_element(By.ID, "drill"))
    assert "CSRF" in text(d)
    # The operator may back up dds-rs1 and describe it, not start drills: RAM refuses with its own error.
    d.delete_all_cookies()
    login(d, server, OPERATOR_AK)
    d.get(base(server) + "/instances/dds-rs1/drills")
    click_and_wait(d, d.find_element(By.ID, "drill"))
    assert "Forbidden.RAM" in d.find_element(By.ID, "refused").text
    time.sleep(1)
    after = len(api_call(server, "DescribeRestoreDrills", DBInstanceId="dds-rs1")["RestoreDrills"]["RestoreDrill"])
    assert after == before


def test_key_without_permissions_sees_refusals_not_data(env, browser):
    from selenium.webdriver.common.by import By

    server, _, first, _ = env
    d = browser
    login(d, server, DENIED_AK)
    assert d.current_url.endswith("/console/instances")
    assert "Refused: Forbidden.RAM" in d.find_element(By.ID, "refused").text
    assert "dds-rs1" not in text(d)
    d.get(base(server) + "/instances/dds-rs1/backups")
    assert "Forbidden.RAM" in d.find_element(By.ID, "refused").text
    assert first.backup_id not in [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.backup")]
    d.get(base(server) + "/audit")
    assert "Forbidden.RAM" in d.find_element(By.ID, "refused").text
    assert not d.find_elements(By.CSS_SELECTOR, "tr.audit-row")
    click_and_wait(d, d.find_element(By.ID, "logout"))

    # The operator may back up dds-rs1 only: dds-other's pages and actions are refused.
    login(d, server, OPERATOR_AK)
    d.get(base(server) + "/instances/dds-rs1/backups")
    assert first.backup_id in [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "tr.backup")]
    d.get(base(server) + "/instances/dds-other/backups")
    assert "Forbidden.RAM" in d.find_element(By.ID, "refused").text
    d.get(base(server) + "/instances/dds-rs1/policy")
    click_and_wait(d, d.find_element(By.ID, "save-policy"))
    assert "dds:ModifyBackupPolicy" in d.find_element(By.ID, "refused").text or \
        "Forbidden.RAM" in d.find_element(By.ID, "refused").text


def test_wrong_secret_is_refused(env, browser):
    from selenium.webdriver.common.by import By

    server, _, _, _ = env
    d = browser
    login(d, server, (ROOT_AK[0], "not-the-secret"))
    assert "Login refused" in text(d)
    assert not [c for c in d.get_cookies() if c["name"] == "ddsvault_console"]
    d.get(base(server) + "/instances")
    assert d.current_url.endswith("/console/login")
    shot(d, "login")
    # An unknown key reads the same.
    login(d, server, ("LTAI5tNoSuchKey000001", ROOT_AK[1]))
    assert "Login refused" in text(d)
    assert d.find_element(By.ID, "message")


def test_post_without_csrf_token_is_refused(env, browser):
    from selenium.webdriver.common.by import By

    server, tea, _, _ = env
    d = browser
    login(d, server, ROOT_AK)
    d.get(base(server) + "/instances/dds-other/backups")
    d.execute_script('document.querySelector("#start-backup input[name=csrf]").remove()')
    click_and_wait(d, d.find_element(By.ID, "start"))
    assert "CSRF" in text(d)
    d.get(base(server) + "/instances/dds-other/backups")
    d.execute_script('document.querySelector("#start-backup input[name=csrf]").value = "00" + '
                     'document.querySelector("#start-backup input[name=csrf]").value.slice(2)')
    click_and_wait(d, d.find_element(By.ID, "start"))
    assert "CSRF" in text(d)
    tasks = tea.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-other")).body
    assert not tasks.backup_jobs, tasks
    # The cookie alone (what a cross-site form would carry) does not start anything either.
    cookie = next(c for c in d.get_cookies() if c["name"] == "ddsvault_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    r = requests.post(base(server) + "/instances/dds-other/backup", data={"method": "Logical"},
                      cookies={"ddsvault_console": cookie["value"]}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "CSRF" in r.text
    # A login form posted without its token is refused before the secret is looked at.
    r = requests.post(base(server) + "/login", data={"access_key_id": ROOT_AK[0], "access_key_secret": ROOT_AK[1]},
                      allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "ddsvault_console=" not in r.headers.get("set-cookie", "")


def test_failed_logins_are_limited_per_address(tmp_path):
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {}))
    try:
        s = requests.Session()

        def attempt(secret):
            page = s.get(f"http://{server.endpoint}/console/login", timeout=30).text
            token = page.split('name="login_csrf" value="', 1)[1].split('"', 1)[0]
            return s.post(f"http://{server.endpoint}/console/login", allow_redirects=False, timeout=30,
                          data={"login_csrf": token, "access_key_id": ROOT_AK[0], "access_key_secret": secret})

        for _ in range(5):
            assert attempt("wrong").status_code == 401
        # The sixth attempt is refused unchecked, even with the right secret.
        r = attempt(ROOT_AK[1])
        assert r.status_code == 429 and "Too many failed logins" in r.text
    finally:
        server.stop()


def _login_form_token(s: requests.Session, server) -> str:
    page = s.get(f"http://{server.endpoint}/console/login", timeout=30).text
    return page.split('name="login_csrf" value="', 1)[1].split('"', 1)[0]


def _login(s: requests.Session, server, secret: str) -> requests.Response:
    return s.post(f"http://{server.endpoint}/console/login", allow_redirects=False, timeout=30,
                  data={"login_csrf": _login_form_token(s, server), "access_key_id": ROOT_AK[0],
                        "access_key_secret": secret})


def test_logout_and_lockout_hold_on_every_process_sharing_a_postgres_catalog(tmp_path):
    """Two ddsvault processes on one PostgreSQL catalog (migration 0021): a session opened on one works on the
    other, a logout on one ends it on both, and failed logins counted on one lock the address out of both."""
    from test_nodes import node_config

    key = tmp_path / "master.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    pg = stack.PostgreSQL(tmp_path / "pg")
    started = []
    try:
        url = pg.create_database("ddsvault")
        api1 = Ddsvault(tmp_path / "api1", node_config(tmp_path, "data1", "api-1", url, {}))
        started.append(api1)
        api2 = Ddsvault(tmp_path / "api2", node_config(tmp_path, "data2", "api-2", url, {}))
        started.append(api2)

        s = requests.Session()
        r = _login(s, api1, ROOT_AK[1])
        assert r.status_code in (302, 303), r.text
        cookie = s.cookies.get("ddsvault_console")
        assert cookie
        page = lambda server: requests.get(f"http://{server.endpoint}/console/instances", timeout=30,  # noqa: E731
                                           cookies={"ddsvault_console": cookie}, allow_redirects=False)
        assert page(api1).status_code == 200 and page(api2).status_code == 200
        # Log out on the first process: the second refuses the cookie too.
        body = page(api1).text
        csrf = body.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = requests.post(f"http://{api1.endpoint}/console/logout", data={"csrf": csrf}, timeout=30,
                          cookies={"ddsvault_console": cookie}, allow_redirects=False)
        assert r.status_code in (302, 303) and r.headers["location"].endswith("/console/login"), r.text
        for server in (api1, api2):
            r = page(server)
            assert r.status_code in (302, 303) and r.headers["location"].endswith("/console/login"), \
                (server.endpoint, r.status_code)

        # Five failed logins on the first process lock the address out of the second, even with the right secret.
        for _ in range(5):
            assert _login(requests.Session(), api1, "wrong").status_code == 401
        r = _login(requests.Session(), api2, ROOT_AK[1])
        assert r.status_code == 429 and "Too many failed logins" in r.text, r.text
        assert "ddsvault_console=" not in r.headers.get("set-cookie", "")
    finally:
        for p in reversed(started):
            p.stop()
        pg.stop()
