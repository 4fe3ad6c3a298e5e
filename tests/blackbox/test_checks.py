"""Start-up checks and `ddsvault check`: what each instance is and what will go wrong with its backups, as
warnings (never a refusal to start); automatic backups only for instances given a policy; one default method for
manual and automatic backups."""
from __future__ import annotations

import json
import subprocess
import time

from alibabacloud_dds20151201 import models as dds

import stack
from conftest import DDSVAULT_BIN, Ddsvault, config_text, tea_client, wait_backup
from test_physical import instance_lines
from test_restore import call

DEAD_URI = "mongodb://127.0.0.1:9/"


def check(config_path, *extra):
    return subprocess.run([DDSVAULT_BIN, "check", "--config", str(config_path), *extra], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_check_start_up_warnings_and_the_attribute_checks(tmp_path):
    rs = stack.FerretDB(tmp_path / "rs", repl_set_name="rs0", create_oplog=True)
    try:
        rs.client().shop.items.insert_one({"a": 1})
        typo = tmp_path / "not-the-data-dir"
        text = config_text(tmp_path / "data", {}) \
            + instance_lines("dds-good", rs.uri, data_path=rs.data_dir) \
            + instance_lines("dds-dead", DEAD_URI) \
            + instance_lines("dds-typo", rs.uri, data_path=typo) \
            + '[[access_keys]]\nid = "LTAI5tExampleKey00001"\nsecret = "example-root-secret-change-me"\nuser = "root"\n'
        conf = tmp_path / "ddsvault.toml"
        conf.write_text(text)

        r = check(conf, "--json")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        found = {(x["instance"], x["check"]): (x["status"], x["message"]) for x in rows}
        assert found[("dds-good", "reachable")][0] == "Ok"
        assert "replica set rs0" in found[("dds-good", "topology")][1]
        assert "FerretDB" in found[("dds-good", "topology")][1]
        assert found[("dds-good", "oplog")][0] == "Ok"
        assert found[("dds-good", "data_path")][0] == "Ok"
        assert found[("dds-good", "default_method")][1].endswith("Physical")
        assert found[("dds-dead", "reachable")][0] == "Warning"
        assert found[("dds-typo", "data_path")][0] == "Warning"
        assert str(typo) in found[("dds-typo", "data_path")][1]
        assert found[("-", "secrets")][0] == "Warning"
        assert "LTAI5tExampleKey00001" in found[("-", "secrets")][1]
        # The secret itself is never printed.
        assert "example-root-secret-change-me" not in r.stdout
        # --strict turns warnings into exit code 1; the table form names them.
        r = check(conf, "--strict")
        assert r.returncode == 1
        assert "WARN" in r.stdout and "dds-dead" in r.stdout
        # An invalid configuration is exit code 2.
        bad = tmp_path / "bad.toml"
        bad.write_text("listen = 12\n")
        r = check(bad)
        assert r.returncode == 2 and "invalid configuration" in r.stderr, r.stderr

        # The server starts anyway and logs the same warnings.
        server = Ddsvault(tmp_path / "svc", text)
        try:
            deadline = time.monotonic() + 30
            while "dds-dead" not in server.stderr() and time.monotonic() < deadline:
                time.sleep(0.2)
            log = server.stderr()
            assert "dds-dead" in log and "reachable" in log, log[-2000:]
            assert "example secret" in log
            attr = call(server, "DescribeDBInstanceAttribute", DBInstanceId="dds-typo")
            checks = {c["Name"]: c for c in attr["DBInstances"]["DBInstance"][0]["Checks"]["Check"]}
            assert checks["data_path"]["Status"] == "Warning"
            assert checks["reachable"]["Status"] == "Ok"
        finally:
            server.stop()
    finally:
        rs.stop()


def test_automatic_backups_are_opt_in_and_the_default_method_is_shared(tmp_path):
    rs = stack.FerretDB(tmp_path / "rs", repl_set_name="rs0", create_oplog=True)
    try:
        rs.client().shop.items.insert_one({"a": 1})
        text = config_text(tmp_path / "data", {}, extra="[scheduler]\nenabled = true") \
            + instance_lines("dds-plain", rs.uri) \
            + instance_lines("dds-auto", rs.uri) \
            + '[instances.policy]\npreferred_backup_time = "02:00Z-03:00Z"\npreferred_backup_period = "Monday"\n' \
            + 'backup_retention_period = 14\n'
        server = Ddsvault(tmp_path / "svc", text)
        try:
            plain = call(server, "DescribeBackupPolicy", DBInstanceId="dds-plain")
            assert plain["AutomaticBackup"] == "Disabled"
            assert plain["PreferredNextBackupTime"] == ""
            assert plain["PreferredBackupTime"] == "03:00Z-04:00Z"  # the defaults are still shown
            auto = call(server, "DescribeBackupPolicy", DBInstanceId="dds-auto")
            assert auto["AutomaticBackup"] == "Enabled"
            assert (auto["PreferredBackupTime"], auto["PreferredBackupPeriod"], auto["BackupRetentionPeriod"]) == \
                ("02:00Z-03:00Z", "Monday", "14")
            assert auto["PreferredNextBackupTime"].endswith("T02:00Z")
            # ModifyBackupPolicy opts an instance in.
            tea = tea_client(server)
            tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id="dds-plain",
                                                                   backup_retention_period=7))
            assert call(server, "DescribeBackupPolicy", DBInstanceId="dds-plain")["AutomaticBackup"] == "Enabled"

            # A replica set without data_path: a manual backup without BackupMethod takes Logical, as the
            # automatic ones do (it used to default to Physical and be refused).
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-plain")).body
            b = wait_backup(tea, "dds-plain", r.backup_job_id)
            assert (b.backup_status, b.backup_method) == ("Success", "Logical")
        finally:
            server.stop()
    finally:
        rs.stop()


def test_the_next_backup_time_counts_the_window_that_is_open_now(tmp_path):
    import datetime

    # The scheduler ticks at start and then only every 10 minutes: a window opened by a policy set after the start
    # is still waiting for its slot to be taken.
    text = config_text(tmp_path / "data", {}, extra="[scheduler]\nenabled = true\ntick_secs = 600") \
        + instance_lines("dds-now", DEAD_URI)
    server = Ddsvault(tmp_path / "svc", text)
    try:
        now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
        if now.minute == 59 and now.hour == 23:
            now += datetime.timedelta(minutes=1)  # a window across midnight belongs to the previous day
        day = now.strftime("%A")
        window = f"{now:%H:%M}Z-{now + datetime.timedelta(hours=1):%H:%M}Z"
        tea = tea_client(server)
        time.sleep(1)  # let the start-up tick pass first: the next one is 10 minutes away
        tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(dbinstance_id="dds-now", preferred_backup_time=window,
                                                               preferred_backup_period=day))
        got = call(server, "DescribeBackupPolicy", DBInstanceId="dds-now")["PreferredNextBackupTime"]
        # Today's window (open, its slot not taken yet), not next week's.
        assert got == f"{now:%Y-%m-%dT%H:%M}Z", (got, window)
    finally:
        server.stop()
