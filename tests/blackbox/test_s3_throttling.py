"""An S3 server that throttles: a small fault-injecting HTTP proxy between ddsvault and a real MinIO answers
`503 SlowDown` (S3's XML error body) for a while, then passes requests through unchanged (the Host header
included, so MinIO accepts ddsvault's SigV4 signatures).

* A throttle that starts with the first part of a backup's multipart upload and lasts 8 s is ridden out by the
  retries (backoff with jitter, `[repository]` defaults): the backup succeeds and verifies.
* A throttle of every part upload that outlasts a small retry budget fails the job with a message naming the
  503; the upload is aborted and nothing of the backup stays.
* A throttle of every request that outlasts the budget also defeats the job's own clean-up; once the server
  answers again, the lost-upload sweep of a GC pass aborts what was left.

In every case: no backup listed Success that does not verify, no multipart upload left."""
from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from alibabacloud_dds20151201 import models as dds

import stack
from conftest import Ddsvault, config_text, tea_client
from test_restore import call
from test_s3 import BUCKET, PREFIX, _big_source, _final, _require_minio, assert_nothing_half_done, cli

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message><RequestId>throttle-proxy</RequestId></Error>')
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def is_part_upload(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


class ThrottlingProxy:
    """Forwards every request to MinIO, except while `rule(method, path)` says to answer 503 SlowDown."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rule = lambda method, path: False
        self.lock = threading.Lock()
        self.throttled = 0
        self.throttled_parts = 0
        self.passed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                    raise RuntimeError("chunked request bodies are not handled by this proxy")
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    throttle = proxy.rule(self.command, self.path)
                    if throttle:
                        proxy.throttled += 1
                        proxy.throttled_parts += is_part_upload(self.command, self.path)
                    else:
                        proxy.passed += 1
                if throttle:
                    self.send_response_only(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOWDOWN)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP_BY_HOP:
                            conn.putheader(k, v)
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() in HOP_BY_HOP or (k.lower() == "content-length" and self.command != "HEAD"):
                            continue
                        self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def throttle_from_first_part(self, seconds: float, parts_only: bool = False):
        """Throttle from the first part upload on, for `seconds` (every request, or part uploads only)."""
        state = {"until": None}

        def rule(method, path):
            if state["until"] is None and is_part_upload(method, path):
                state["until"] = time.monotonic() + seconds
            if state["until"] is None or time.monotonic() >= state["until"]:
                return False
            return is_part_upload(method, path) or not parts_only
        self.rule = rule

    def pass_through(self):
        self.rule = lambda method, path: False

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _stack(tmp_path, **repository):
    _require_minio()
    minio = stack.MinIO(tmp_path / "minio").start()
    minio.bucket(BUCKET)
    proxy = ThrottlingProxy(minio.port)
    big = _big_source(tmp_path / "big")
    repo = minio.repository_config(BUCKET, PREFIX, part_size_mib=5, parts_in_flight=2, **repository)
    repo = repo.replace(minio.endpoint, proxy.endpoint)
    assert proxy.endpoint in repo
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-big": (big.uri, "local_ssd")},
                                                     extra=repo))
    return minio, proxy, big, server


def _task(server, job_id):
    jobs = call(server, "DescribeBackupTasks", DBInstanceId="dds-big", BackupJobId=job_id)["BackupJobs"]
    assert len(jobs) == 1, jobs
    return jobs[0]


def _no_success_that_does_not_verify(server, tea):
    body = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-big")).body
    for b in (body.backups.backup if body.backups else None) or []:
        if b.backup_status == "Success":
            v = cli(server, "verify", "--backup-id", b.backup_id)
            assert v.returncode == 0, (b.backup_id, v.stderr)


def test_a_throttle_shorter_than_the_retry_budget_is_ridden_out(tmp_path):
    # The `[repository]` retry defaults: 10 retries, 180 s, delays from 1 s growing by half each attempt.
    minio, proxy, big, server = _stack(tmp_path)
    try:
        tea = tea_client(server)
        proxy.throttle_from_first_part(8.0)
        started = time.monotonic()
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
        b = _final(tea, "dds-big", job.backup_job_id)
        took = time.monotonic() - started
        # The throttle really happened, to part uploads, and for its whole duration.
        assert proxy.throttled_parts >= 1 and proxy.throttled >= 2, (proxy.throttled, proxy.throttled_parts)
        assert took >= 8.0, took
        assert b is not None, f"the backup failed under an 8 s throttle: {_task(server, job.backup_job_id)}"
        assert b.backup_status == "Success"
        v = cli(server, "verify", "--backup-id", b.backup_id)
        assert v.returncode == 0, v.stderr
        assert_nothing_half_done(minio)
        _no_success_that_does_not_verify(server, tea)
        print(f"8 s throttle: {proxy.throttled} request(s) answered 503, backup done in {took:.1f} s")
    finally:
        proxy.close()
        server.stop()
        big.stop()
        minio.stop()


def test_a_throttle_past_the_retry_budget_fails_the_job_and_leaves_nothing(tmp_path):
    minio, proxy, big, server = _stack(tmp_path, max_retries=2, retry_timeout_secs=4,
                                       retry_initial_backoff_ms=200, retry_max_backoff_secs=1)
    try:
        tea = tea_client(server)
        proxy.throttle_from_first_part(3600.0, parts_only=True)
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
        b = _final(tea, "dds-big", job.backup_job_id, timeout=180)
        assert b is None, "a backup whose parts were all refused cannot be Success"
        task = _task(server, job.backup_job_id)
        assert task["JobStatus"] == "Failed", task
        assert "503" in task["ErrorMessage"], task
        print(f"job failed past the retry budget: {task['ErrorMessage']}")
        assert proxy.throttled_parts >= 1
        # The abort and the clean-up were not throttled: nothing is left, at once.
        assert_nothing_half_done(minio)
        assert minio.keys(BUCKET, f"{PREFIX}/backups/dds-big/") == {}
        _no_success_that_does_not_verify(server, tea)

        # The throttle ends: the next backup works.
        proxy.pass_through()
        b2 = _final(tea, "dds-big", tea.create_backup(dds.CreateBackupRequest(
            dbinstance_id="dds-big", backup_method="Logical")).body.backup_job_id)
        assert b2 is not None and b2.backup_status == "Success"
        assert cli(server, "verify", "--backup-id", b2.backup_id).returncode == 0
        assert_nothing_half_done(minio)
    finally:
        proxy.close()
        server.stop()
        big.stop()
        minio.stop()


def test_a_throttle_that_also_defeats_the_clean_up_is_swept_by_gc(tmp_path):
    minio, proxy, big, server = _stack(tmp_path, max_retries=2, retry_timeout_secs=3,
                                       retry_initial_backoff_ms=200, retry_max_backoff_secs=1,
                                       lost_upload_grace_secs=1)
    try:
        tea = tea_client(server)
        proxy.throttle_from_first_part(3600.0)
        job = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-big", backup_method="Logical")).body
        b = _final(tea, "dds-big", job.backup_job_id, timeout=180)
        assert b is None
        task = _task(server, job.backup_job_id)
        assert task["JobStatus"] == "Failed" and "503" in task["ErrorMessage"], task
        # The clean-up was refused too: the upload is still there (seen directly, not through the proxy).
        assert minio.multipart_uploads(BUCKET), "the throttled clean-up could not abort the upload"

        proxy.pass_through()
        g = cli(server, "gc")
        assert g.returncode == 0, g.stdout + g.stderr
        assert minio.multipart_uploads(BUCKET) == []
        assert_nothing_half_done(minio)
        _no_success_that_does_not_verify(server, tea)
    finally:
        proxy.close()
        server.stop()
        big.stop()
        minio.stop()
