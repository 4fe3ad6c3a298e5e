"""The Alibaba RPC protocol as the official SDKs speak it: signatures V3 and V1, timestamps, nonces, error bodies."""
from __future__ import annotations

import datetime
import json

import pytest
import requests
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils import Utils as TeaUtils
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest
from aliyunsdkcore.utils import parameter_helper
from aliyunsdkdds.request.v20151201.DescribeDBInstancesRequest import DescribeDBInstancesRequest

import stack
from conftest import ROOT_AK, Ddsvault, acs_call, acs_client, config_text, tea_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("protocol")
    rs = stack.FerretDB(base / "rs", repl_set_name="rs0")
    rs.client().app.c.insert_one({"a": 1})
    s = Ddsvault(base / "ddsvault", config_text(base / "ddsvault" / "data", {"dds-p1": (rs.uri, "local_ssd")}))
    yield s
    s.stop()
    rs.stop()


def tea_error(fn) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value


def acs_error(fn) -> ServerException:
    with pytest.raises(ServerException) as ei:
        fn()
    return ei.value


def describe_v3(client):
    return client.describe_dbinstances(dds.DescribeDBInstancesRequest())


def acs_describe(server, ak=ROOT_AK):
    return acs_call(server, DescribeDBInstancesRequest(), ak)


def test_all_three_sdk_paths_succeed(server):
    for c in (tea_client(server), tea_client(server, v1=True)):
        body = describe_v3(c).body
        assert body.total_count == 1 and body.dbinstances.dbinstance[0].dbinstance_id == "dds-p1"
        assert body.request_id and len(body.request_id) == 36
    raw = acs_describe(server)
    assert raw["TotalCount"] == 1 and raw["DBInstances"]["DBInstance"][0]["DBInstanceId"] == "dds-p1"


def test_get_and_form_body_requests(server):
    # CommonRequest can send GET, and POST with parameters in a signed form body.
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name="DescribeDBInstanceAttribute",
                        product="Dds")
    req.set_method("GET")
    req.add_query_param("DBInstanceId", "dds-p1")
    out = json.loads(acs_client(server).do_action_with_exception(req))
    assert out["DBInstances"]["DBInstance"][0]["DBInstanceId"] == "dds-p1"
    req = CommonRequest(domain="127.0.0.1", version="2015-12-01", action_name="DescribeDBInstanceAttribute",
                        product="Dds")
    req.set_method("POST")
    req.add_body_params("DBInstanceId", "dds-p1")
    out = json.loads(acs_client(server).do_action_with_exception(req))
    assert out["DBInstances"]["DBInstance"][0]["DBInstanceId"] == "dds-p1"


def test_unknown_access_key(server):
    bad = ("LTAI5tNoSuchKey000000", "whatever")
    for c in (tea_client(server, bad), tea_client(server, bad, v1=True)):
        e = tea_error(lambda: describe_v3(c))
        assert (e.status_code, e.code) == (404, "InvalidAccessKeyId.NotFound")
        assert e.data["HostId"] and e.data["Recommend"].startswith("https://api.aliyun.com/troubleshoot?q=")
    e = acs_error(lambda: acs_describe(server, bad))
    assert (e.get_http_status(), e.get_error_code()) == (404, "InvalidAccessKeyId.NotFound")


def test_wrong_secret(server):
    bad = (ROOT_AK[0], "not-the-secret")
    e = tea_error(lambda: describe_v3(tea_client(server, bad)))
    assert (e.status_code, e.code) == (400, "SignatureDoesNotMatch")
    assert "not-the-secret" not in str(e.data) and ROOT_AK[1] not in str(e.data)
    e = tea_error(lambda: describe_v3(tea_client(server, bad, v1=True)))
    assert (e.status_code, e.code) == (400, "SignatureDoesNotMatch")
    # The V1 SDK compares the server's "string to sign is:" with its own; when they match, it knows only the
    # secret is wrong and says so. This proves our V1 string-to-sign is byte-identical to the SDK's.
    e = acs_error(lambda: acs_describe(server, bad))
    assert e.get_http_status() == 400
    assert e.get_error_code() == "InvalidAccessKeySecret", e.get_error_msg()


def test_expired_timestamps(server, monkeypatch):
    old = (datetime.datetime.utcnow() - datetime.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setattr(TeaUtils, "get_timestamp", staticmethod(lambda: old))
    for c in (tea_client(server), tea_client(server, v1=True)):
        e = tea_error(lambda: describe_v3(c))
        assert (e.status_code, e.code) == (400, "InvalidTimeStamp.Expired")
    monkeypatch.setattr(parameter_helper, "get_iso_8061_date", lambda: old)
    e = acs_error(lambda: acs_describe(server))
    assert (e.get_http_status(), e.get_error_code()) == (400, "InvalidTimeStamp.Expired")
    future = (datetime.datetime.utcnow() + datetime.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setattr(TeaUtils, "get_timestamp", staticmethod(lambda: future))
    e = tea_error(lambda: describe_v3(tea_client(server)))
    assert e.code == "InvalidTimeStamp.Expired"
    # Within the window is fine.
    near = (datetime.datetime.utcnow() - datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setattr(TeaUtils, "get_timestamp", staticmethod(lambda: near))
    assert describe_v3(tea_client(server)).status_code == 200


def test_reused_nonce(server, monkeypatch):
    for v1 in (False, True):
        nonce = f"fixednonce{'v1' if v1 else 'v3'}000000000000000000"
        monkeypatch.setattr(TeaUtils, "get_nonce", staticmethod(lambda n=nonce: n))
        c = tea_client(server, v1=v1)
        assert describe_v3(c).status_code == 200
        e = tea_error(lambda: describe_v3(c))
        assert (e.status_code, e.code) == (400, "SignatureNonceUsed")
    monkeypatch.setattr(parameter_helper, "get_uuid", lambda: "acs-fixed-nonce-0001")
    acs_describe(server)
    e = acs_error(lambda: acs_describe(server))
    assert (e.get_http_status(), e.get_error_code()) == (400, "SignatureNonceUsed")


def common(action: str, version: str = "2015-12-01", **params) -> CommonRequest:
    req = CommonRequest(domain="127.0.0.1", version=version, action_name=action, product="Dds")
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return req


def test_unknown_action_wrong_version_missing_parameter(server):
    e = acs_error(lambda: acs_client(server).do_action_with_exception(common("NoSuchAction")))
    assert (e.get_http_status(), e.get_error_code()) == (404, "InvalidApi.NotFound")
    e = acs_error(lambda: acs_client(server).do_action_with_exception(common("DescribeBackups", "2014-01-01",
                                                                             DBInstanceId="dds-p1")))
    assert (e.get_http_status(), e.get_error_code()) == (400, "InvalidVersion")
    e = acs_error(lambda: acs_client(server).do_action_with_exception(common("CreateBackup")))
    assert (e.get_http_status(), e.get_error_code()) == (400, "MissingParameter")
    assert "DBInstanceId" in e.get_error_msg()
    # Through the V3 client's generic call path too.
    from alibabacloud_tea_openapi import models as open_api_models
    from darabonba.runtime import RuntimeOptions
    c = tea_client(server)
    params = open_api_models.Params(action="NoSuchAction", version="2015-12-01", protocol="HTTP", pathname="/",
                                    method="POST", auth_type="AK", style="RPC", req_body_type="formData",
                                    body_type="json")
    e = tea_error(lambda: c.call_api(params, open_api_models.OpenApiRequest(query={}),
                                     RuntimeOptions()))
    assert (e.status_code, e.code) == (404, "InvalidApi.NotFound")
    e = tea_error(lambda: c.create_backup(dds.CreateBackupRequest()))
    assert (e.status_code, e.code) == (400, "MissingParameter")


def test_known_but_unimplemented_action_is_explicit(server):
    e = acs_error(lambda: acs_client(server).do_action_with_exception(
        common("DescribeBinlogFiles", DBInstanceId="dds-p1")))
    assert (e.get_http_status(), e.get_error_code()) == (400, "UnsupportedOperation")


def test_unsigned_and_malformed_raw_requests(server):
    url = f"http://{server.endpoint}/"
    r = requests.post(url, params={"Action": "DescribeDBInstances", "Version": "2015-12-01"}, timeout=10)
    assert r.status_code == 400
    body = r.json()
    assert set(body) >= {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert body["Code"].startswith("Missing")
    assert r.headers["content-type"].startswith("application/json")
    # A body larger than any Dds call is refused before parsing, without a 5xx.
    r = requests.post(url, data=b"x" * (2 * 1024 * 1024),
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)
    assert 400 <= r.status_code < 500
