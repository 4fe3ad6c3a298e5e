"""`catalog_url = "postgres://…"`: ddsvault serve on a real PostgreSQL catalog (a throw-away cluster started by the
test), a backup through the official SDK, DescribeBackups and a restore; and an unusable URL refused at start."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
from alibabacloud_dds20151201 import models as dds
from aliyunsdkcore.request import CommonRequest
from bson import encode

import stack
from conftest import DDSVAULT_BIN, Ddsvault, acs_client, config_text, seed_data, snapshot, tea_client, wait_backup

DBS = ("shop", "crm")


def call(server, action, **params):
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return json.loads(acs_client(server).do_action_with_exception(req))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("pgcat")
    pg = stack.PostgreSQL(base / "pg")
    try:
        url = pg.create_database("ddsvault")
        src = stack.FerretDB(base / "src", repl_set_name="rs0")
        seed_data(src.client(), DBS)
        expected = snapshot(src.client(), DBS)
        dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
        data = base / "data"
        server = Ddsvault(base / "svc", config_text(data, {"dds-src": (src.uri, "local_ssd"),
                                                           "dds-dst": (dst.uri, "local_ssd")},
                                                    extra=f'catalog_url = "{url}"'))
    except BaseException:
        # A failed setup must not leave the cluster running (teardown does not run).
        pg.stop()
        raise
    yield {"server": server, "pg": pg, "src": src, "dst": dst, "expected": expected, "data": data, "base": base}
    server.stop()
    for f in (src, dst):
        f.stop()
    pg.stop()


def test_backup_describe_restore_on_a_postgres_catalog(env):
    server, pg = env["server"], env["pg"]
    tea = tea_client(server)
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
    b = wait_backup(tea, "dds-src", r.backup_job_id, timeout=300)
    assert b.backup_status == "Success"
    listed = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-src")).body
    assert listed.total_count == 1 and listed.backups.backup[0].backup_id == b.backup_id
    # The rows are in PostgreSQL, and no SQLite catalog was created beside the data.
    assert pg.sql("ddsvault", f"SELECT status FROM backups WHERE id = {int(b.backup_id)}") == "Success"
    assert pg.sql("ddsvault", "SELECT n FROM backup_counts WHERE instance_id = 'dds-src' AND status = 'Success'") == "1"
    assert not (env["data"] / "catalog.db").exists()

    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", BackupId=b.backup_id,
               TargetDBInstanceId="dds-dst")
    deadline = time.monotonic() + 300
    while True:
        jobs = call(server, "DescribeRestoreTasks", DBInstanceId="dds-dst",
                    RestoreJobId=out["RestoreJobId"])["RestoreJobs"]
        if jobs and jobs[0]["Status"] in ("Success", "Failed"):
            break
        assert time.monotonic() < deadline, "restore did not finish"
        time.sleep(0.2)
    assert jobs[0]["Status"] == "Success", jobs[0]["ErrorMessage"]
    got = snapshot(env["dst"].client(), DBS)
    assert sorted(got) == sorted(env["expected"])
    for ns, docs in env["expected"].items():
        assert [encode(d) for d in got[ns]] == [encode(d) for d in docs], ns

    # A restart keeps everything (the catalog is the server's, not the process's).
    server.stop()
    server.start()
    again = tea_client(server).describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-src")).body
    assert [x.backup_id for x in again.backups.backup] == [b.backup_id]


def test_unusable_catalog_url_is_refused_at_start_without_the_password(env, tmp_path):
    port = stack.free_port()
    for url, expect in [
        (f"postgres://ddsvault:Sup3rSecretPw@127.0.0.1:{port}/ddsvault", "cannot connect to the PostgreSQL catalog"),
        ("mysql://ddsvault:Sup3rSecretPw@127.0.0.1/x", "catalog_url"),
    ]:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(config_text(tmp_path / "data", {}, extra=f'catalog_url = "{url}"'))
        r = subprocess.run([DDSVAULT_BIN, "serve", "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert expect in out, out
        assert "Sup3rSecretPw" not in out, out
