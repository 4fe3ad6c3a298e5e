"""Monitoring through the real binary: /metrics scraped by the Prometheus project's own OpenMetrics parser after a
real backup of FerretDB, /healthz and /readyz (also when the repository becomes unusable), the switch that turns
the endpoints off or moves them to their own listener, signed alert webhooks for a backup that really failed
(with a retry, and a receiver that never answers not holding anything up), and JSON logs (docs/monitoring.md)."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import stack
from conftest import (DDSVAULT_BIN, OPERATOR_AK, ROOT_AK, Ddsvault, config_text, tea_client,
                      wait_backup)
from test_faults import wait_job_end
from test_physical import instance_lines

SECRETS = [ROOT_AK[1], OPERATOR_AK[1], "root-secret", "operator-secret"]
HOOK_SECRET = "hook-signing-secret-0001"

# DescribeBackupPolicy gets one call per 100 s: the second one is throttled (Throttling.Api).
THROTTLING = """
[throttling.actions]
DescribeBackupPolicy = { rate = 0.01, burst = 1 }
"""


def scrape(base_url: str) -> tuple[dict, str]:
    """GET /metrics, parsed strictly as OpenMetrics: {(sample name, frozenset(labels)): value} and the text."""
    r = requests.get(f"{base_url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, r.text


def value(samples: dict, name: str, **labels) -> float:
    """A sample's value; 0 when it is absent (a counter not yet created)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def assert_no_secret(text: str, ferret: stack.FerretDB) -> None:
    for s in SECRETS + [HOOK_SECRET]:
        assert s not in text, f"secret {s!r} in the output"
    assert "mongodb://" not in text
    assert f"127.0.0.1:{ferret.port}" not in text


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    ferret = stack.FerretDB(base / "m1", repl_set_name="rs0")
    ferret.client().shop.orders.insert_many([{"_id": i, "pad": "x" * 200} for i in range(2000)])
    data = base / "ddsvault" / "data"
    server = Ddsvault(base / "ddsvault", config_text(data, {"dds-m1": (ferret.uri, "local_ssd")}, extra=THROTTLING))
    yield {"server": server, "ferret": ferret, "data": data, "url": f"http://{server.endpoint}"}
    server.stop()
    ferret.stop()


def test_a_real_backup_moves_the_job_backup_and_api_counters(env):
    server, url = env["server"], env["url"]
    before, _ = scrape(url)
    tea = tea_client(server)
    t0 = time.time()
    job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-m1", backup_method="Logical")).body
    backup = wait_backup(tea, "dds-m1", job.backup_job_id)
    assert backup.backup_status == "Success"
    # A refused call is counted under its Dds code.
    with pytest.raises(ClientException) as ei:
        tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-m1", backup_method="Nope"))
    assert ei.value.code == "InvalidBackupMethod.ValueNotSupport"
    # The second DescribeBackupPolicy within 100 s is throttled.
    tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-m1"))
    with pytest.raises(ThrottlingException) as ei:
        tea.describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-m1"))
    assert ei.value.code == "Throttling.Api"

    # The catalog's numbers are re-read at most once a second.
    time.sleep(1.1)
    after, text = scrape(url)
    assert_no_secret(text, env["ferret"])

    def moved(name, by=1.0, **labels):
        got = value(after, name, **labels) - value(before, name, **labels)
        assert got == by, f"{name}{labels}: moved by {got}, expected {by}"

    moved("ddsvault_jobs_finished_total", kind="backup", method="Logical", state="Success")
    moved("ddsvault_job_duration_seconds_count", kind="backup", method="Logical", state="Success")
    moved("ddsvault_job_bytes_count", kind="backup", method="Logical")
    assert value(after, "ddsvault_job_bytes_sum", kind="backup", method="Logical") >= backup.backup_size > 0
    moved("ddsvault_api_calls_total", action="CreateBackup", code="OK")
    moved("ddsvault_api_calls_total", action="CreateBackup", code="InvalidBackupMethod.ValueNotSupport")
    moved("ddsvault_api_calls_total", action="DescribeBackupPolicy", code="Throttling.Api")
    moved("ddsvault_api_throttled_calls_total", action="DescribeBackupPolicy", scope="api")
    assert value(after, "ddsvault_api_calls_total", action="DescribeBackups", code="OK") >= 1
    # Every call is in its action's latency histogram; buckets are cumulative and end at +Inf = count.
    calls = sum(v for (n, ls), v in after.items()
                if n == "ddsvault_api_calls_total" and ("action", "CreateBackup") in ls)
    assert value(after, "ddsvault_api_call_duration_seconds_count", action="CreateBackup") == calls == 2
    buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in after.items()
                      if n == "ddsvault_api_call_duration_seconds_bucket" and dict(ls)["action"] == "CreateBackup"))
    assert len(buckets) > 5 and buckets[-1] == (float("inf"), 2)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets
    # From the catalog.
    assert value(after, "ddsvault_catalog_up") == 1
    assert value(after, "ddsvault_jobs", kind="backup", method="Logical", state="Success") >= 1
    assert value(after, "ddsvault_backups", method="Logical", status="Success") >= 1
    assert value(after, "ddsvault_repository_bytes", method="Logical", status="Success") >= backup.backup_size
    last = value(after, "ddsvault_last_successful_backup_timestamp_seconds", instance="dds-m1")
    assert t0 - 1 <= last <= time.time() + 1, (t0, last)


def test_healthz_and_readyz_follow_the_repository(env):
    url = env["url"]
    r = requests.get(f"{url}/healthz", timeout=10)
    assert (r.status_code, r.text) == (200, "ok\n")
    r = requests.get(f"{url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"catalog": "ok", "repository": "ok"}}

    # The repository directory replaced by a file: nothing can be written there any more (root ignores modes,
    # so a chmod would not do).
    repo = env["data"] / "repository"
    aside = env["data"] / "repository.aside"
    repo.rename(aside)
    repo.write_text("not a directory")
    try:
        deadline = time.monotonic() + 15
        while True:
            r = requests.get(f"{url}/readyz", timeout=10)
            if r.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 503, r.text
        assert r.json() == {"status": "not ready", "checks": {"catalog": "ok", "repository": "unavailable"}}
        assert str(env["data"]) not in r.text
        # The process itself is still up.
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        repo.unlink()
        aside.rename(repo)
    deadline = time.monotonic() + 15
    while requests.get(f"{url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the repository came back"
        time.sleep(0.5)


def test_the_endpoints_can_be_switched_off_or_moved(tmp_path):
    off = Ddsvault(tmp_path / "off", config_text(tmp_path / "off-data", {}, extra="[metrics]\nenabled = false\n"))
    try:
        for path in ("/metrics", "/healthz", "/readyz"):
            r = requests.get(f"http://{off.endpoint}{path}", timeout=10)
            assert r.status_code == 404, (path, r.status_code, r.text)
            assert "ddsvault_" not in r.text
    finally:
        off.stop()

    port = stack.free_port()
    moved = Ddsvault(tmp_path / "moved",
                     config_text(tmp_path / "moved-data", {}, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'))
    try:
        samples, _ = scrape(f"http://127.0.0.1:{port}")
        assert value(samples, "ddsvault_catalog_up") == 1
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        for path in ("/metrics", "/healthz", "/readyz"):
            assert requests.get(f"http://{moved.endpoint}{path}", timeout=10).status_code == 404, path
        # The API still answers on its own listener.
        with pytest.raises(ClientException) as ei:
            tea_client(moved).describe_backup_policy(dds.DescribeBackupPolicyRequest(dbinstance_id="dds-none"))
        assert ei.value.code == "InvalidDBInstanceId.NotFound"
    finally:
        moved.stop()


def test_the_log_backup_lag_follows_the_oplog(tmp_path):
    """Continuous log backup on: the stored end of the oplog per instance and its lag appear and move on."""
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0", create_oplog=True)
    src.client().app.items.insert_one({"_id": 0})
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-log": (src.uri, "local_ssd")},
                                                    extra="[log_backup]\nslice_secs = 1\npoll_ms = 200"))
    try:
        url = f"http://{server.endpoint}"
        samples, _ = scrape(url)
        assert ("ddsvault_log_backup_lag_seconds", frozenset({("instance", "dds-log")})) not in samples
        tea_client(server).modify_backup_policy(dds.ModifyBackupPolicyRequest(
            dbinstance_id="dds-log", enable_backup_log=1, log_backup_retention_period=7))
        first = None
        for i in range(1, 4):
            src.client().app.items.insert_one({"_id": i})
            written = time.time()
            deadline = time.monotonic() + 60
            while True:
                samples, text = scrape(url)
                end = value(samples, "ddsvault_log_backup_stored_until_timestamp_seconds", instance="dds-log")
                if end >= int(written) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert end >= int(written), f"the write of {written:.0f} is not stored after 60 s:\n{text}"
            lag = value(samples, "ddsvault_log_backup_lag_seconds", instance="dds-log")
            assert 0 <= lag <= time.time() - end + 1.5, (lag, end)
            first = first or end
            time.sleep(1.1)
        assert end > first, (first, end)
    finally:
        server.stop()
        src.stop()


# ------------------------------------------------------------------------------------------------ webhooks

class Receiver:
    """An HTTP receiver in a thread: records every POST; answers `statuses` in turn, then 200."""

    def __init__(self, statuses=()):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook/TOKEN-IN-URL"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class BlackHole:
    """Accepts connections and never answers: a webhook that times out."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


def test_a_failed_backup_sends_a_signed_retried_webhook_and_a_silent_receiver_blocks_nothing(tmp_path):
    good = stack.FerretDB(tmp_path / "good", repl_set_name="rs0")
    good.client().shop.items.insert_many([{"_id": i} for i in range(500)])
    receiver = Receiver(statuses=[500])
    hole = BlackHole()
    # A typo in data_path: accepted at start, fatal to a Snapshot job (Filesystem.Error) - a real failure.
    alerts = (f"[alerts]\nmax_attempts = 3\ntimeout_secs = 10\n"
              f'[[alerts.webhooks]]\nurl = "{hole.url}"\n'
              f'[[alerts.webhooks]]\nurl = "{receiver.url}"\nsecret = "{HOOK_SECRET}"\nevents = ["job_failed"]\n')
    text = (config_text(tmp_path / "data", {"dds-good": (good.uri, "local_ssd")}, extra=alerts)
            + instance_lines("dds-typo", good.uri, data_path=tmp_path / "no-such-dir"))
    server = Ddsvault(tmp_path / "svc", text)
    try:
        tea = tea_client(server)
        failing = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-typo", backup_method="Snapshot")).body
        assert wait_job_end(server, "dds-typo", failing.backup_job_id, timeout=60)["JobStatus"] == "Failed"
        # While the silent webhook is still being waited for, another backup runs to its end.
        ok = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-good", backup_method="Logical")).body
        assert wait_backup(tea, "dds-good", ok.backup_job_id).backup_status == "Success"
        url = f"http://{server.endpoint}"
        samples, _ = scrape(url)
        assert value(samples, "ddsvault_alerts_total", event="job_failed", result="failed") == 0, \
            "the silent webhook (3 attempts of 10 s) was given up before the next backup finished"
        assert value(samples, "ddsvault_jobs_finished_total", kind="backup", method="Logical", state="Success") == 1

        # The signed receiver: a 500 first, then the retry with the same body, id and a valid signature.
        deadline = time.monotonic() + 30
        while len(receiver.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(receiver.requests) == 2, receiver.requests
        (h1, b1), (h2, b2) = receiver.requests
        assert b1 == b2 and h1["x-ddsvault-delivery"] == h2["x-ddsvault-delivery"]
        for h, b in receiver.requests:
            assert h["content-type"] == "application/json"
            assert h["x-ddsvault-event"] == "job_failed"
            want = "sha256=" + hmac.new(HOOK_SECRET.encode(), b, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(h["x-ddsvault-signature"], want), (h, want)
        body = json.loads(b2)
        assert body["event"] == "job_failed" and body["id"] == h2["x-ddsvault-delivery"]
        assert body["instance_id"] == "dds-typo" and body["kind"] == "backup" and body["method"] == "Snapshot"
        assert str(body["job_id"]) == str(failing.backup_job_id)
        assert body["error_code"] == "Filesystem.Error" and body["region_id"] == "cn-hangzhou"
        assert "mongodb://" not in b2.decode() and HOOK_SECRET not in b2.decode()
        # The silent webhook was tried (and is still waited for or given up on), never delivered.
        assert hole.accepted, "the silent webhook was never called"

        # The failure reached the silent webhook too (all events); it is given up after 3 attempts of 10 s.
        deadline = time.monotonic() + 60
        while True:
            samples, text = scrape(url)
            failed = value(samples, "ddsvault_alerts_total", event="job_failed", result="failed")
            if failed >= 1 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert failed == 1, text
        assert value(samples, "ddsvault_alerts_total", event="job_failed", result="delivered") == 1, text
        assert len(hole.accepted) == 3, hole.accepted
        assert value(samples, "ddsvault_jobs_finished_total", kind="backup", method="Snapshot", state="Failed") == 1
        assert "TOKEN-IN-URL" not in text and "TOKEN-IN-URL" not in server.stderr()
        assert HOOK_SECRET not in server.stderr()
    finally:
        server.stop()
        receiver.close()
        hole.close()
        good.stop()


# ------------------------------------------------------------------------------------------------ logs

def test_json_logs_parse_and_carry_no_secret(tmp_path, monkeypatch):
    ferret = stack.FerretDB(tmp_path / "f", repl_set_name="rs0")
    ferret.client().shop.items.insert_one({"a": 1})
    monkeypatch.setenv("DDSVAULT_LOG_FORMAT", "json")
    monkeypatch.setenv("DDSVAULT_LOG", "debug")
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-j": (ferret.uri, "local_ssd")}))
    try:
        tea = tea_client(server)
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-j", backup_method="Logical")).body
        assert wait_backup(tea, "dds-j", job.backup_job_id).backup_status == "Success"
        # A refused call with a wrong secret is logged too.
        with pytest.raises(ClientException):
            tea_client(server, ak=(ROOT_AK[0], "a-wrong-secret-0001")).describe_backups(
                dds.DescribeBackupsRequest(dbinstance_id="dds-j"))
    finally:
        server.stop()
        ferret.stop()
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    assert len(lines) > 5
    records = []
    for line in lines:  # every line is one JSON object
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AssertionError(f"not a JSON line ({e}): {line!r}") from None
    assert all({"timestamp", "level", "fields"} <= r.keys() for r in records), records[:3]
    messages = [r["fields"].get("message", "") for r in records]
    assert any("ok" == m for m in messages), messages
    text = "\n".join(lines)
    for s in SECRETS + ["a-wrong-secret-0001"]:
        assert s not in text, s
    assert "mongodb://" not in text


def test_a_bad_log_format_is_refused_clearly(tmp_path):
    env = dict(os.environ, DDSVAULT_LOG_FORMAT="xml")
    r = subprocess.run([DDSVAULT_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert 'DDSVAULT_LOG_FORMAT="xml"' in r.stderr and '"json"' in r.stderr, r.stderr



# ------------------------------------------------------------------------------------------------ contrib/

CONTRIB = stack.REPO_DIR / "contrib"


def test_the_example_config_passes_check_and_serves_monitoring_on_its_own_listener(tmp_path):
    example = (CONTRIB / "ddsvault.example.toml").read_text()
    # What the unit's ExecStartPre runs: valid (exit 0), with the placeholders flagged.
    r = subprocess.run([DDSVAULT_BIN, "check", "--config", str(CONTRIB / "ddsvault.example.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "example secret" in r.stdout and "PASSWORD" not in r.stdout + r.stderr
    # A mistake in it stops the start (exit 2) with the reason.
    bad = tmp_path / "bad.toml"
    bad.write_text(example.replace('listen = "127.0.0.1:9187"', 'listen = "9187"'))
    r = subprocess.run([DDSVAULT_BIN, "check", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "[metrics] listen" in r.stderr, r.stderr

    # The example, with this test's directories and ports, starts and serves /readyz on the metrics listener only.
    mport = stack.free_port()
    text = (example.replace('data_dir = "/var/lib/ddsvault"', f'data_dir = "{tmp_path / "state"}"')
            .replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"')
            .replace('listen = "127.0.0.1:9187"', f'listen = "127.0.0.1:{mport}"')
            .replace("[scheduler]\nenabled = true", "[scheduler]\nenabled = false"))
    assert f"127.0.0.1:{mport}" in text and str(tmp_path / "state") in text
    server = Ddsvault(tmp_path / "svc", text)
    try:
        r = requests.get(f"http://127.0.0.1:{mport}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert requests.get(f"http://{server.endpoint}/readyz", timeout=10).status_code == 404
    finally:
        server.stop()


def test_the_systemd_unit_is_hardened_and_valid(tmp_path):
    unit = (CONTRIB / "systemd" / "ddsvault.service").read_text()
    directives = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines()
                  if "=" in line and not line.startswith("#")}
    assert directives["User"] == "ddsvault" and directives["Group"] == "ddsvault"
    assert directives["ProtectSystem"] == "strict"
    assert directives["NoNewPrivileges"] == "yes"
    assert "/var/lib/ddsvault" in directives["ReadWritePaths"]
    assert directives["ExecStartPre"].startswith("/usr/local/bin/ddsvault check --config ")
    assert directives["ExecStart"].startswith("/usr/local/bin/ddsvault serve --config ")
    assert "/etc/ddsvault/ddsvault.toml" in directives["Environment"] or \
        "DDSVAULT_CONFIG=/etc/ddsvault/ddsvault.toml" in unit
    analyze = "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        from conftest import skip_or_fail
        skip_or_fail("systemd-analyze is not installed (Debian package systemd)")
    # With this build's binary in place of /usr/local/bin/ddsvault (verify checks that the commands exist).
    copy = tmp_path / "ddsvault.service"
    copy.write_text(unit.replace("/usr/local/bin/ddsvault", DDSVAULT_BIN))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
