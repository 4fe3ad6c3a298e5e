"""RAM `Condition`, `NotAction` and `NotResource` through the official SDKs: every operator family allows and denies
according to the request context the server supplies (peer address, time, transport, User-Agent)."""
from __future__ import annotations

import json

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException

from conftest import REGION, ROOT_AK, Ddsvault, config_text

UA_SUFFIX = "ddsvault-cond-test/1.0"

# name -> (condition block, allowed for a plain-HTTP call from 127.0.0.1 by the tea SDK with UA_SUFFIX)
CASES = {
    "ip_in": ({"IpAddress": {"acs:SourceIp": ["10.0.0.0/8", "127.0.0.0/8"]}}, True),
    "ip_out": ({"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}}, False),
    "notip_in": ({"NotIpAddress": {"acs:SourceIp": "192.168.0.0/16"}}, True),
    "notip_out": ({"NotIpAddress": {"acs:SourceIp": "127.0.0.1"}}, False),
    "str_eq": ({"StringEquals": {"acs:SourceIp": "127.0.0.1"}}, True),
    "str_ne": ({"StringNotEquals": {"acs:SourceIp": "127.0.0.1"}}, False),
    "str_like": ({"StringLike": {"acs:UserAgent": f"* {UA_SUFFIX}"}}, True),
    "str_notlike": ({"StringNotLike": {"acs:UserAgent": "*ddsvault-cond-test*"}}, False),
    "str_icase": ({"StringEqualsIgnoreCase": {"acs:SecureTransport": "FALSE"}}, True),
    "str_icase_no": ({"StringNotEqualsIgnoreCase": {"acs:SecureTransport": "False"}}, False),
    "num_gt": ({"NumericGreaterThan": {"acs:EpochTime": 1700000000}}, True),
    "num_lt": ({"NumericLessThanEquals": {"acs:EpochTime": "1700000000"}}, False),
    "date_after": ({"DateGreaterThanEquals": {"acs:CurrentTime": "2020-01-01T08:00:00+08:00"}}, True),
    "date_before": ({"DateLessThan": {"acs:CurrentTime": "2020-01-01T00:00:00Z"}}, False),
    "bool_plain": ({"Bool": {"acs:SecureTransport": "false", "acs:MFAPresent": False}}, True),
    "bool_tls": ({"Bool": {"acs:SecureTransport": "true"}}, False),
    # AND across operators: one false clause is enough to deny.
    "and_mixed": ({"IpAddress": {"acs:SourceIp": "127.0.0.1/32"}, "Bool": {"acs:SecureTransport": True}}, False),
    # Absent key (no Referer header): positive operators are false, negated ones true.
    "referer_like": ({"StringLike": {"acs:Referer": "*"}}, False),
    "referer_not": ({"StringNotEquals": {"acs:Referer": "https://evil.example"}}, True),
}

EXTRA_POLICIES = {
    # Everything except creating backups.
    "notaction": {"Effect": "Allow", "NotAction": "dds:Create*", "Resource": "*"},
    # Every instance except dds-secret.
    "notresource": {"Effect": "Allow", "Action": "dds:*", "NotResource": ["acs:dds:*:*:dbinstance/dds-secret"]},
}
# An Allow-all with a conditional explicit Deny (the classic "only from the office network" policy).
OFFICE_ONLY = [
    {"Effect": "Allow", "Action": "dds:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "dds:*", "Resource": "*",
     "Condition": {"NotIpAddress": {"acs:SourceIp": ["10.0.0.0/8", "172.16.0.0/12"]}}},
]


def key_of(name: str) -> tuple[str, str]:
    return (f"LTAI5tCond{name.replace('_', '')}", f"secret-{name}")


def users_config(policies: dict[str, list]) -> str:
    """RAM users named after their only policy, each with one AccessKey."""
    lines = []
    for name, statements in policies.items():
        ak = key_of(name)
        doc = json.dumps({"Version": "1", "Statement": statements})
        lines += ["[[ram_users]]", f'name = "u_{name}"', f'policies = ["p_{name}"]',
                  "[[ram_policies]]", f'name = "p_{name}"', f"document = '''{doc}'''",
                  "[[access_keys]]", f'id = "{ak[0]}"', f'secret = "{ak[1]}"', f'user = "u_{name}"']
    return "\n".join(lines) + "\n"


def readme_policy(name: str) -> list:
    """The statements of an example policy in README's "RAM policies" section."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "ram.md").read_text()
    m = re.search(rf"<!-- policy:{name} -->.*?```json\n(.*?)```", text, re.S)
    assert m, name
    return json.loads(m.group(1))["Statement"]


ALL_POLICIES = {
    **{name: [{"Effect": "Allow", "Action": "dds:DescribeDBInstances", "Resource": "*", "Condition": cond}]
       for name, (cond, _) in CASES.items()},
    **{name: [st] for name, st in EXTRA_POLICIES.items()},
    "office": OFFICE_ONLY,
    **{f"readme_{name}": readme_policy(name) for name in ("auditor", "operator", "admin")},
}


def client(server: Ddsvault, ak=ROOT_AK, v1: bool = False):
    from alibabacloud_tea_openapi import models as open_api_models
    from alibabacloud_dds20151201.client import Client

    kwargs = dict(access_key_id=ak[0], access_key_secret=ak[1], endpoint=server.endpoint, protocol="http",
                  region_id=REGION, read_timeout=30000, connect_timeout=5000, user_agent=UA_SUFFIX)
    if v1:
        kwargs["signature_algorithm"] = "v2"
    return Client(open_api_models.Config(**kwargs))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ramcond")
    text = config_text(base / "data", {}) + users_config(ALL_POLICIES)
    s = Ddsvault(base / "ddsvault", text)
    yield s
    s.stop()


def forbidden(fn) -> dict:
    with pytest.raises(ClientException) as ei:
        fn()
    assert (ei.value.status_code, ei.value.code) == (403, "Forbidden.RAM"), ei.value.message
    return ei.value.access_denied_detail


@pytest.mark.parametrize("name", sorted(CASES))
def test_condition_operator(server, name):
    _, allowed = CASES[name]
    c = client(server, key_of(name), v1=name.startswith("str"))
    call = lambda: c.describe_dbinstances(dds.DescribeDBInstancesRequest())  # noqa: E731
    if allowed:
        assert call().body.total_count == 0
    else:
        assert forbidden(call)["NoPermissionType"] == "ImplicitDeny"


def test_not_action(server):
    c = client(server, key_of("notaction"))
    assert c.describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200
    d = forbidden(lambda: c.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-x", backup_method="Logical")))
    assert d["AuthAction"] == "dds:CreateBackup"


def test_not_resource(server):
    c = client(server, key_of("notresource"))
    d = forbidden(lambda: c.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-secret")))
    diag = d["EncodedDiagnosticMessage"]
    assert diag
    # Any other instance passes RAM; the action itself then reports the unknown instance.
    with pytest.raises(ClientException) as ei:
        c.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-other"))
    assert ei.value.code != "Forbidden.RAM", ei.value.message


def test_conditional_explicit_deny(server):
    c = client(server, key_of("office"))
    # 127.0.0.1 is not in the office networks: the Deny applies and beats the Allow.
    d = forbidden(lambda: c.describe_dbinstances(dds.DescribeDBInstancesRequest()))
    assert d["NoPermissionType"] == "ExplicitDeny"


def test_readme_example_policies(server):
    # The auditor policy only allows office networks over TLS: a plain call from 127.0.0.1 is explicitly denied.
    auditor = client(server, key_of("readme_auditor"))
    d = forbidden(lambda: auditor.describe_dbinstances(dds.DescribeDBInstancesRequest()))
    assert d["NoPermissionType"] == "ExplicitDeny"
    # The operator may back up dds-bp1aaaa (RAM passes; the instance is not configured here), not another instance,
    # and may never delete a backup.
    op = client(server, key_of("readme_operator"))
    with pytest.raises(ClientException) as ei:
        op.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-bp1aaaa", backup_method="Logical"))
    assert ei.value.code != "Forbidden.RAM", ei.value.message
    forbidden(lambda: op.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-bp1bbbb", backup_method="Logical")))
    d = forbidden(lambda: op.delete_backup(dds.DeleteBackupRequest(dbinstance_id="dds-bp1aaaa", backup_id="1")))
    assert d["NoPermissionType"] == "ExplicitDeny"
    assert op.describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200
    # The admin may do everything.
    admin = client(server, key_of("readme_admin"))
    assert admin.describe_dbinstances(dds.DescribeDBInstancesRequest()).status_code == 200
    with pytest.raises(ClientException) as ei:
        admin.delete_backup(dds.DeleteBackupRequest(dbinstance_id="dds-bp1aaaa", backup_id="1"))
    assert ei.value.code != "Forbidden.RAM", ei.value.message


# ---------------------------------------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    import re
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    base = tmp_path_factory.mktemp("ramtls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    extra = f'listen_tls = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    # The TLS keys must precede the first table of the configuration.
    text = extra + config_text(base / "data", {}) + users_config(ALL_POLICIES)
    s = Ddsvault(base / "ddsvault", text)
    ports = [int(m.group(1)) for line in s.stdout_lines
             if (m := re.search(r"listening on https://127\.0\.0\.1:(\d+)", line))]
    assert ports, s.stdout_lines
    s.tls_port = ports[0]
    s.ca = str(cert)
    yield s
    s.stop()


def tls_call(server, ak, v1=False):
    from alibabacloud_tea_openapi import models as open_api_models
    from alibabacloud_dds20151201.client import Client
    from darabonba.runtime import RuntimeOptions

    kwargs = dict(access_key_id=ak[0], access_key_secret=ak[1], endpoint=f"127.0.0.1:{server.tls_port}",
                  protocol="https", region_id=REGION, read_timeout=30000, connect_timeout=5000,
                  user_agent=UA_SUFFIX)
    if v1:
        kwargs["signature_algorithm"] = "v2"
    c = Client(open_api_models.Config(**kwargs))
    # Verified against the test certificate: the call really is TLS, not a fallback.
    return lambda: c.describe_dbinstances_with_options(dds.DescribeDBInstancesRequest(), RuntimeOptions(ca=server.ca))


def test_tls_secure_transport_allows(tls_server):
    assert tls_call(tls_server, ROOT_AK)().body.total_count == 0
    # Allowed only over TLS: passes here, refused over plain HTTP.
    assert tls_call(tls_server, key_of("bool_tls"))().status_code == 200
    assert tls_call(tls_server, key_of("bool_tls"), v1=True)().status_code == 200
    forbidden(lambda: client(tls_server, key_of("bool_tls")).describe_dbinstances(dds.DescribeDBInstancesRequest()))


def test_tls_secure_transport_denies(tls_server):
    # Allowed only over plain HTTP (SecureTransport false): refused over TLS.
    d = forbidden(tls_call(tls_server, key_of("bool_plain")))
    assert d["NoPermissionType"] == "ImplicitDeny"
    assert client(tls_server, key_of("bool_plain")).describe_dbinstances(
        dds.DescribeDBInstancesRequest()).status_code == 200


def test_tls_rejects_plain_http_on_tls_port(tls_server):
    import socket

    with socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200"), data


def test_tls_calls_are_audited_as_secure(tls_server):
    """Last test of the module: stops the TLS server and reads its audit trail."""
    import subprocess

    from conftest import DDSVAULT_BIN

    assert tls_server.stop() == 0
    out = subprocess.run([DDSVAULT_BIN, "audit", "--config", str(tls_server.config_path), "--json",
                          "--access-key", key_of("bool_tls")[0]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    # Newest first: the plain-HTTP refusal, then the two TLS successes.
    assert [(r["SecureTransport"], r["HttpStatus"], r["Code"]) for r in records] == [
        (False, 403, "Forbidden.RAM"), (True, 200, None), (True, 200, None)], records
