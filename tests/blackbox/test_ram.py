"""RAM authorization through both SDKs: the root key may do everything, RAM users what their policies allow."""
from __future__ import annotations

import json

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkdds.request.v20151201.DescribeBackupsRequest import DescribeBackupsRequest

import stack
from conftest import (ACCOUNT_ID, AUDITOR_AK, DENIED_AK, OPERATOR_AK, REGION, Ddsvault, acs_call, config_text,
                      tea_client, wait_backup)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ram")
    a = stack.FerretDB(base / "a", repl_set_name="rs0")
    a.client().app.c.insert_many([{"i": i} for i in range(10)])
    b = stack.FerretDB(base / "b", repl_set_name="rs0")
    b.client().app.c.insert_one({"i": 1})
    s = Ddsvault(base / "ddsvault", config_text(base / "ddsvault" / "data", {
        "dds-rs1": (a.uri, "local_ssd"), "dds-rs2": (b.uri, "local_ssd")}))
    yield s
    s.stop()
    a.stop()
    b.stop()


def denied(fn) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    e = ei.value
    assert (e.status_code, e.code) == (403, "Forbidden.RAM"), e.message
    return e


def test_operator_scoped_to_one_instance(server):
    op = tea_client(server, OPERATOR_AK)
    r = op.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs1", backup_method="Logical")).body
    assert wait_backup(op, "dds-rs1", r.backup_job_id).backup_status == "Success"
    assert op.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs1")).body.total_count >= 1

    e = denied(lambda: op.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs2", backup_method="Logical")))
    d = e.access_denied_detail
    assert d["NoPermissionType"] == "ImplicitDeny"
    assert d["AuthAction"] == "dds:CreateBackup"
    assert d["AuthPrincipalDisplayName"] == "operator"
    assert d["AuthPrincipalOwnerId"] == ACCOUNT_ID
    assert d["AuthPrincipalType"] == "SubUser"
    assert d["EncodedDiagnosticMessage"]
    # Not even a describe on the other instance, and nothing outside dds:CreateBackup / dds:Describe*.
    denied(lambda: op.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs2")))
    denied(lambda: op.describe_dbinstances(dds.DescribeDBInstancesRequest()))  # resource "*" is not dds-rs1
    # The refusal happens before the action runs: no job was created on dds-rs2.
    root = tea_client(server)
    assert root.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-rs2")).body.backup_jobs == []


def test_auditor_read_only_with_explicit_deny(server):
    au = tea_client(server, AUDITOR_AK, v1=True)
    assert au.describe_dbinstances(dds.DescribeDBInstancesRequest()).body.total_count == 2
    assert au.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs2")).status_code == 200
    e = denied(lambda: au.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-rs2", backup_method="Logical")))
    assert e.access_denied_detail["NoPermissionType"] == "ImplicitDeny"
    # Allowed by Describe*, but explicitly denied by the NoTasks policy: Deny wins.
    e = denied(lambda: au.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-rs1")))
    assert e.access_denied_detail["NoPermissionType"] == "ExplicitDeny"


def test_user_without_policies_and_v1_sdk(server):
    nobody = tea_client(server, DENIED_AK)
    denied(lambda: nobody.describe_dbinstances(dds.DescribeDBInstancesRequest()))
    req = DescribeBackupsRequest()
    req.set_DBInstanceId("dds-rs1")
    with pytest.raises(ServerException) as ei:
        acs_call(server, req, DENIED_AK)
    assert (ei.value.get_http_status(), ei.value.get_error_code()) == (403, "Forbidden.RAM")
    # The root key is never subject to RAM.
    root = tea_client(server)
    assert root.describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-rs1")).status_code == 200


def test_denial_detail_names_the_resource(server):
    import base64

    op = tea_client(server, OPERATOR_AK)
    e = denied(lambda: op.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-rs2")))
    diag = json.loads(base64.b64decode(e.access_denied_detail["EncodedDiagnosticMessage"]))
    assert diag["AuthResource"] == f"acs:dds:{REGION}:{ACCOUNT_ID}:dbinstance/dds-rs2"
