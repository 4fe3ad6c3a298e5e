"""Identities managed at run time: `ddsvault ram …` (the real binary, beside the running server) creates users,
groups, policies and AccessKeys in the catalog; the official SDKs then call with those keys."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkdds.request.v20151201.DescribeBackupsRequest import DescribeBackupsRequest

import stack
from conftest import DDSVAULT_BIN, OPERATOR_AK, ROOT_AK, Ddsvault, acs_call, config_text, tea_client

KEY_LINE = re.compile(r"AccessKeyId:\s+(\S+)\s*\n\s*AccessKeySecret:\s+(\S+)")


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("identity")
    db = stack.FerretDB(base / "db", repl_set_name="rs0")
    db.client().app.c.insert_one({"i": 1})
    yield base, db
    db.stop()


@pytest.fixture(scope="module")
def server(stack_dir):
    base, db = stack_dir
    s = Ddsvault(base / "ddsvault", config_text(base / "ddsvault" / "data", {
        "dds-id1": (db.uri, "local_ssd"), "dds-id2": (db.uri, "local_ssd")}))
    yield s
    s.stop()


def ram(server: Ddsvault, *args, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([DDSVAULT_BIN, "ram", "--config", str(server.config_path), *args], capture_output=True,
                       text=True, timeout=60, input=stdin, env=dict(os.environ, DDSVAULT_LOG="warn"))
    if check:
        assert p.returncode == 0, f"ddsvault ram {args}: {p.stdout}\n{p.stderr}"
    return p


def new_key(server: Ddsvault, user: str) -> tuple[str, str]:
    out = ram(server, "key", "create", "--user", user).stdout
    m = KEY_LINE.search(out)
    assert m, out
    return m.group(1), m.group(2)


def policy(server: Ddsvault, tmp_path, name: str, statements: list) -> None:
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps({"Version": "1", "Statement": statements}))
    ram(server, "policy", "create", "--name", name, "--document", str(f))


def refused(fn, status: int, code: str) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    assert (ei.value.status_code, ei.value.code) == (status, code), ei.value.message
    return ei.value


def backups(client, instance: str):
    return client.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=instance))


def test_cli_user_gets_exactly_its_policy(server, tmp_path):
    ram(server, "user", "create", "carol")
    policy(server, tmp_path, "CarolReadsId1", [
        {"Effect": "Allow", "Action": "dds:DescribeBackups", "Resource": "acs:dds:*:*:dbinstance/dds-id1"}])
    ram(server, "attach-policy", "--policy", "CarolReadsId1", "--user", "carol")
    ak = new_key(server, "carol")
    carol = tea_client(server, ak)
    assert backups(carol, "dds-id1").status_code == 200
    e = refused(lambda: backups(carol, "dds-id2"), 403, "Forbidden.RAM")
    assert e.access_denied_detail["AuthPrincipalDisplayName"] == "carol"
    refused(lambda: carol.describe_dbinstances(dds.DescribeDBInstancesRequest()), 403, "Forbidden.RAM")
    refused(lambda: carol.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-id1", backup_method="Logical")),
            403, "Forbidden.RAM")
    # The V1 SDK with the same key sees the same rights.
    req = DescribeBackupsRequest()
    req.set_DBInstanceId("dds-id1")
    assert "Backups" in acs_call(server, req, ak)

    # Detaching takes effect at the next request of the running server.
    ram(server, "detach-policy", "--policy", "CarolReadsId1", "--user", "carol")
    refused(lambda: backups(carol, "dds-id1"), 403, "Forbidden.RAM")

    listed = ram(server, "user", "list").stdout
    assert re.search(r"^carol\tcli\t", listed, re.M), listed
    assert re.search(r"^operator\tconfig\t-\tBackupRs1\t", listed, re.M), listed


def test_group_inherited_policies(server, tmp_path):
    ram(server, "user", "create", "dave")
    ram(server, "group", "create", "readers")
    policy(server, tmp_path, "ListInstances", [
        {"Effect": "Allow", "Action": "dds:DescribeDBInstances", "Resource": "*"}])
    policy(server, tmp_path, "NoId2", [
        {"Effect": "Deny", "Action": "dds:*", "Resource": "acs:dds:*:*:dbinstance/dds-id2"}])
    policy(server, tmp_path, "AllBackups", [
        {"Effect": "Allow", "Action": "dds:DescribeBackups", "Resource": "acs:dds:*:*:dbinstance/*"}])
    ram(server, "attach-policy", "--policy", "ListInstances", "--group", "readers")
    ram(server, "attach-policy", "--policy", "NoId2", "--group", "readers")
    ram(server, "attach-policy", "--policy", "AllBackups", "--user", "dave")
    dave = tea_client(server, new_key(server, "dave"))
    refused(lambda: dave.describe_dbinstances(dds.DescribeDBInstancesRequest()), 403, "Forbidden.RAM")
    assert backups(dave, "dds-id2").status_code == 200

    ram(server, "group", "add-user", "readers", "--user", "dave")
    # Group Allow + direct Allow both apply; the group's Deny beats the direct Allow.
    assert dave.describe_dbinstances(dds.DescribeDBInstancesRequest()).body.total_count == 2
    assert backups(dave, "dds-id1").status_code == 200
    e = refused(lambda: backups(dave, "dds-id2"), 403, "Forbidden.RAM")
    assert e.access_denied_detail["NoPermissionType"] == "ExplicitDeny"

    groups = ram(server, "group", "list").stdout
    assert re.search(r"^readers\tcli\tdave\tListInstances,NoId2\t", groups, re.M), groups
    # A group with members cannot be deleted; leaving the group removes its policies at once.
    p = ram(server, "group", "delete", "readers", check=False)
    assert p.returncode != 0 and "members" in p.stderr, p.stderr
    ram(server, "group", "remove-user", "readers", "--user", "dave")
    refused(lambda: dave.describe_dbinstances(dds.DescribeDBInstancesRequest()), 403, "Forbidden.RAM")
    assert backups(dave, "dds-id2").status_code == 200


def test_at_most_two_keys_per_user(server):
    ram(server, "user", "create", "erin")
    first, second = new_key(server, "erin"), new_key(server, "erin")
    assert first[0] != second[0]
    p = ram(server, "key", "create", "--user", "erin", check=False)
    assert p.returncode != 0
    assert "at most 2" in p.stderr, p.stderr
    assert "AccessKeySecret" not in p.stdout
    assert len(re.findall(r"^LTAI\S+\terin\t", ram(server, "key", "list", "--user", "erin").stdout, re.M)) == 2
    # Both keys work.
    for ak in (first, second):
        refused(lambda ak=ak: backups(tea_client(server, ak), "dds-id1"), 403, "Forbidden.RAM")
    p = ram(server, "key", "create", "--user", "ghost", check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr, p.stderr
    # A user with keys cannot be deleted.
    p = ram(server, "user", "delete", "erin", check=False)
    assert p.returncode != 0 and "AccessKeys" in p.stderr, p.stderr


def test_disable_enable_delete_take_effect_at_once(server, tmp_path):
    ram(server, "user", "create", "frank")
    policy(server, tmp_path, "FrankBackups", [{"Effect": "Allow", "Action": "dds:DescribeBackups", "Resource": "*"},
                                              {"Effect": "Allow", "Action": "dds:DescribeBackups",
                                               "Resource": "acs:dds:*:*:dbinstance/*"}])
    ram(server, "attach-policy", "--policy", "FrankBackups", "--user", "frank")
    ak = new_key(server, "frank")
    frank = tea_client(server, ak)
    assert backups(frank, "dds-id1").status_code == 200

    ram(server, "key", "disable", ak[0])
    refused(lambda: backups(frank, "dds-id1"), 400, "InvalidAccessKeyId.Inactive")
    req = DescribeBackupsRequest()
    req.set_DBInstanceId("dds-id1")
    with pytest.raises(ServerException) as ei:
        acs_call(server, req, ak)
    assert (ei.value.get_http_status(), ei.value.get_error_code()) == (400, "InvalidAccessKeyId.Inactive")
    assert re.search(rf"^{ak[0]}\tfrank\tInactive\tcli\t", ram(server, "key", "list").stdout, re.M)

    ram(server, "key", "enable", ak[0])
    assert backups(frank, "dds-id1").status_code == 200
    listed = ram(server, "key", "list", "--user", "frank").stdout
    m = re.search(rf"^{ak[0]}\tfrank\tActive\tcli\t\S+\t(\S+)$", listed, re.M)
    assert m and m.group(1) != "-", f"last use recorded: {listed}"

    ram(server, "key", "delete", ak[0])
    refused(lambda: backups(frank, "dds-id1"), 404, "InvalidAccessKeyId.NotFound")
    p = ram(server, "key", "delete", ak[0], check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr

    # Config keys can be disabled too, and the root key is unaffected.
    ram(server, "key", "disable", OPERATOR_AK[0])
    refused(lambda: backups(tea_client(server, OPERATOR_AK), "dds-id1"), 400, "InvalidAccessKeyId.Inactive")
    ram(server, "key", "enable", OPERATOR_AK[0])
    # Authenticated again: RAM decides now (its policy covers dds-rs1 only).
    refused(lambda: backups(tea_client(server, OPERATOR_AK), "dds-id1"), 403, "Forbidden.RAM")
    assert backups(tea_client(server, ROOT_AK), "dds-id2").status_code == 200


def test_secret_shown_once_and_never_stored_in_clear(server):
    ram(server, "user", "create", "grace")
    ak = new_key(server, "grace")
    everything = "".join(ram(server, *a).stdout for a in (
        ("key", "list"), ("user", "list"), ("group", "list"), ("policy", "list")))
    assert ak[0] in everything and ak[1] not in everything
    data = server.dir / "data"
    blobs = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("catalog.db"))
    assert ak[0].encode() in blobs, "the key id is stored"
    for secret in (ak[1], ROOT_AK[1], OPERATOR_AK[1]):
        assert secret.encode() not in blobs, f"{secret} found in the catalog files"
    key_file = data / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for secret in (ak[1], ROOT_AK[1], OPERATOR_AK[1]):
        assert secret_not_logged(server, secret)


def secret_not_logged(server: Ddsvault, secret: str) -> bool:
    return secret not in server.stderr() and all(secret not in line for line in server.stdout_lines)


def test_config_state_survives_restart_and_plaintext_rows_are_sealed(stack_dir, tmp_path):
    base, db = stack_dir
    d = base / "restart"
    s = Ddsvault(d, config_text(d / "data", {"dds-r1": (db.uri, "local_ssd")}))
    try:
        ram(s, "key", "disable", OPERATOR_AK[0])
        ram(s, "user", "create", "henry")
        henry = new_key(s, "henry")
        s.stop()
        # A catalog written before encryption at rest: the secret in clear, format `plain`.
        con = sqlite3.connect(d / "data" / "catalog.db")
        con.execute("UPDATE access_keys SET secret = ?, secret_format = 'plain' WHERE id = ?", (henry[1], henry[0]))
        con.commit()
        con.close()
        s.start()
        con = sqlite3.connect(d / "data" / "catalog.db")
        rows = dict(con.execute("SELECT id, secret_format FROM access_keys").fetchall())
        stored = con.execute("SELECT secret FROM access_keys WHERE id = ?", (henry[0],)).fetchone()[0]
        con.close()
        assert set(rows.values()) == {"aes256gcm-v1"}, rows
        assert henry[1] not in stored
        # The run-time user and its key survived; the key still authenticates (RAM refuses: no policy).
        refused(lambda: backups(tea_client(s, henry), "dds-r1"), 403, "Forbidden.RAM")
        # The key disabled at run time stays disabled although the config lists it.
        refused(lambda: backups(tea_client(s, OPERATOR_AK), "dds-r1"), 400, "InvalidAccessKeyId.Inactive")
    finally:
        s.stop()


def test_wrong_master_key_is_refused_at_start(stack_dir, monkeypatch):
    base, db = stack_dir
    d = base / "wrongkey"
    s = Ddsvault(d, config_text(d / "data", {"dds-w1": (db.uri, "local_ssd")}))
    s.stop()
    monkeypatch.setenv("DDSVAULT_MASTER_KEY", "ab" * 32)
    with pytest.raises(RuntimeError):
        s.start()
    assert "master key does not match" in s.stderr()
