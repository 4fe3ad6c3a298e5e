"""The audit trail: every call (allowed, refused by RAM, failed authentication) is recorded in the catalog and
readable with `ddsvault audit`; nothing is lost on a clean shutdown and no secret or signature is stored."""
from __future__ import annotations

import json
import subprocess

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException

from conftest import (DDSVAULT_BIN, DENIED_AK, OPERATOR_AK, ROOT_AK, Ddsvault, config_text, tea_client)


def audit(server: Ddsvault, *args: str) -> list[dict]:
    out = subprocess.run([DDSVAULT_BIN, "audit", "--config", str(server.config_path), "--json", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def stopped_server(tmp_path_factory):
    """A server that served a known mix of calls, then stopped cleanly."""
    base = tmp_path_factory.mktemp("audit")
    s = Ddsvault(base / "ddsvault", config_text(base / "data", {}))
    root = tea_client(s)
    for _ in range(40):
        assert root.describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200
    with pytest.raises(ClientException) as ei:
        tea_client(s, DENIED_AK).describe_dbinstances(dds.DescribeDBInstancesRequest())
    assert ei.value.code == "Forbidden.RAM"
    with pytest.raises(ClientException) as ei:
        tea_client(s, OPERATOR_AK).describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-other"))
    assert ei.value.code == "Forbidden.RAM"
    with pytest.raises(ClientException) as ei:
        tea_client(s, (ROOT_AK[0], "wrong-secret"), v1=True).describe_dbinstances(dds.DescribeDBInstancesRequest())
    assert ei.value.code == "SignatureDoesNotMatch"
    with pytest.raises(ClientException) as ei:
        tea_client(s, ("LTAI5tNoSuchKey000001", "x")).describe_backups(
            dds.DescribeBackupsRequest(dbinstance_id="dds-a"))
    assert ei.value.code == "InvalidAccessKeyId.NotFound"
    # Stop right after the last call: queued records must still reach the catalog.
    assert s.stop() == 0
    yield s


def test_every_call_is_recorded(stopped_server):
    records = audit(stopped_server, "--limit", "1000")
    assert len(records) == 44, records
    ok = [r for r in records if r["Code"] is None]
    assert len(ok) == 40
    r = ok[0]
    assert (r["AccessKeyId"], r["User"], r["Action"], r["HttpStatus"]) == (
        ROOT_AK[0], "root", "DescribeDBInstances", 200)
    assert r["Resources"] == ["*"] and r["SourceIp"] == "127.0.0.1" and r["SecureTransport"] is False
    assert r["RequestId"] and r["Time"].endswith("Z")
    by_code = {r["Code"]: r for r in records if r["Code"]}
    denied = by_code["Forbidden.RAM"]
    assert denied["HttpStatus"] == 403
    assert {(x["AccessKeyId"], x["User"]) for x in records if x["Code"] == "Forbidden.RAM"} == {
        (DENIED_AK[0], "nobody"), (OPERATOR_AK[0], "operator")}
    op = next(x for x in records if x["AccessKeyId"] == OPERATOR_AK[0])
    assert op["Resources"] == ["acs:dds:cn-hangzhou:1234567890123456:dbinstance/dds-other"]
    # Authentication failures name the key and action the request claimed, but no user.
    bad_sig = by_code["SignatureDoesNotMatch"]
    assert (bad_sig["AccessKeyId"], bad_sig["User"], bad_sig["Action"], bad_sig["HttpStatus"]) == (
        ROOT_AK[0], None, "DescribeDBInstances", 400)
    unknown = by_code["InvalidAccessKeyId.NotFound"]
    assert (unknown["AccessKeyId"], unknown["Action"], unknown["HttpStatus"]) == (
        "LTAI5tNoSuchKey000001", "DescribeBackups", 404)


def test_no_secret_is_stored(stopped_server):
    records = audit(stopped_server, "--limit", "1000")
    text = json.dumps(records)
    for secret in (ROOT_AK[1], DENIED_AK[1], OPERATOR_AK[1], "wrong-secret"):
        assert secret not in text
    assert "dds-a" not in text  # parameter values of failed calls are not kept
    assert {frozenset(r) for r in records} == {frozenset(
        ["Time", "RequestId", "AccessKeyId", "User", "Action", "Resources", "SourceIp", "SecureTransport",
         "HttpStatus", "Code"])}


def test_filters(stopped_server):
    assert len(audit(stopped_server, "--access-key", DENIED_AK[0])) == 1
    assert {r["Action"] for r in audit(stopped_server, "--action", "describebackups")} == {"DescribeBackups"}
    assert len(audit(stopped_server, "--action", "DescribeBackups")) == 2
    assert len(audit(stopped_server, "--limit", "3")) == 3
    assert len(audit(stopped_server, "--since", "1h", "--limit", "1000")) == 44
    assert audit(stopped_server, "--since", "2999-01-01T00:00:00Z") == []
    table = subprocess.run([DDSVAULT_BIN, "audit", "--config", str(stopped_server.config_path), "--limit", "1",
                            "--access-key", DENIED_AK[0]], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "Forbidden.RAM" in table.stdout and DENIED_AK[0] in table.stdout
    bad = subprocess.run([DDSVAULT_BIN, "audit", "--config", str(stopped_server.config_path), "--since", "soon"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "RFC 3339" in bad.stderr
