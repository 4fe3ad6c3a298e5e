"""Flow control and request limits. Through the official SDK: over the per-AccessKey limit the tea SDK raises `ThrottlingException`
(`Throttling.User`), over a per-action limit too (`Throttling.Api`), both with the `x-acs-retry-after` wait in
milliseconds; other keys and actions are unaffected."""
from __future__ import annotations

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkdds.request.v20151201.DescribeDBInstancesRequest import DescribeDBInstancesRequest

from conftest import (AUDITOR_AK, DENIED_AK, OPERATOR_AK, ROOT_AK, Ddsvault, acs_call, config_text, tea_client)

# Slow refills (one token every 100 s) so that no token comes back while a test runs.
THROTTLING = """
[throttling]
per_access_key = { rate = 0.01, burst = 3 }
per_action = { rate = 1000, burst = 1000 }
[throttling.actions]
DescribeBackupTasks = { rate = 0.01, burst = 2 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("throttle")
    s = Ddsvault(base / "ddsvault", config_text(base / "data", {}, extra=THROTTLING))
    yield s
    s.stop()


def test_per_access_key_limit(server):
    root = tea_client(server, ROOT_AK)
    for _ in range(3):
        assert root.describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200
    with pytest.raises(ThrottlingException) as ei:
        root.describe_dbinstances(dds.DescribeDBInstancesRequest())
    e = ei.value
    assert (e.status_code, e.code) == (400, "Throttling.User")
    assert "flow control" in e.message
    # One token every 100 s: the wait is most of that, in milliseconds.
    assert 90_000 <= e.retry_after <= 100_000, e.retry_after
    # The V1 SDK (AcsClient) sees the same code.
    with pytest.raises(ServerException) as ei:
        acs_call(server, DescribeDBInstancesRequest(), ROOT_AK)
    assert ei.value.get_error_code() == "Throttling.User"


def test_per_action_limit_spans_keys(server):
    for ak in (OPERATOR_AK, AUDITOR_AK):
        # Within the action's budget: RAM then decides (and the action reports the unknown instance).
        with pytest.raises(ClientException) as ei:
            tea_client(server, ak).describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-x"))
        assert not ei.value.code.startswith("Throttling"), ei.value.code
    with pytest.raises(ThrottlingException) as ei:
        tea_client(server, DENIED_AK).describe_backup_tasks(dds.DescribeBackupTasksRequest(dbinstance_id="dds-x"))
    assert (ei.value.status_code, ei.value.code) == (400, "Throttling.Api")
    assert ei.value.retry_after > 0
    # Other actions of the same key still pass the limiter (and reach RAM).
    with pytest.raises(ClientException) as ei:
        tea_client(server, DENIED_AK).describe_dbinstances(dds.DescribeDBInstancesRequest())
    assert ei.value.code == "Forbidden.RAM"


def test_oversized_query_is_refused(server):
    import json
    import urllib.error
    import urllib.request

    url = f"http://{server.endpoint}/?Action=DescribeBackups&Junk={'A' * 40_000}"
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url, timeout=30)
    assert ei.value.code == 414
    body = json.loads(ei.value.read())
    assert body["Code"] == "RequestURITooLong" and body["RequestId"]
    # Far beyond, the HTTP layer refuses the request line itself.
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(f"http://{server.endpoint}/?Junk={'A' * 70_000}", timeout=30)
    assert ei.value.code == 414
