"""The RAM API subset (product Ram, 2015-05-01) through the official alibabacloud-ram20150501 SDK: users, groups,
policies and AccessKeys created over the API are the ones the Dds API then authenticates and authorizes."""
from __future__ import annotations

import json

import pytest
from alibabacloud_dds20151201 import models as dds
from alibabacloud_tea_openapi.exceptions import ClientException

from conftest import REGION, ROOT_AK, Ddsvault, config_text, tea_client

ram_sdk = pytest.importorskip("alibabacloud_ram20150501", reason="pip install -r requirements.txt (alibabacloud-ram20150501)")
from alibabacloud_ram20150501 import models as ram  # noqa: E402
from alibabacloud_ram20150501.client import Client as RamClient  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ramapi")
    # No instance needs to answer: DescribeBackups reads the catalog only.
    s = Ddsvault(base / "ddsvault", config_text(base / "ddsvault" / "data", {
        "dds-ra1": ("mongodb://127.0.0.1:1", "local_ssd"), "dds-ra2": ("mongodb://127.0.0.1:1", "local_ssd")}))
    yield s
    s.stop()


def ram_client(server: Ddsvault, ak=ROOT_AK) -> RamClient:
    from alibabacloud_tea_openapi import models as open_api_models
    return RamClient(open_api_models.Config(access_key_id=ak[0], access_key_secret=ak[1], endpoint=server.endpoint,
                                            protocol="http", region_id=REGION))


def refused(fn, status: int, code: str) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    assert (ei.value.status_code, ei.value.code) == (status, code), ei.value.message
    return ei.value


def doc(*statements) -> str:
    return json.dumps({"Version": "1", "Statement": list(statements)})


def test_users_policies_and_keys_over_the_ram_api(server):
    c = ram_client(server)
    u = c.create_user(ram.CreateUserRequest(user_name="ivy", display_name="Ivy")).body.user
    assert (u.user_name, u.display_name) == ("ivy", "Ivy") and u.create_date.endswith("Z")
    refused(lambda: c.create_user(ram.CreateUserRequest(user_name="ivy")), 409, "EntityAlreadyExists.User")
    assert "ivy" in [x.user_name for x in c.list_users(ram.ListUsersRequest()).body.users.user]
    assert c.get_user(ram.GetUserRequest(user_name="ivy")).body.user.user_name == "ivy"
    refused(lambda: c.get_user(ram.GetUserRequest(user_name="nobody-here")), 404, "EntityNotExist.User")

    c.create_policy(ram.CreatePolicyRequest(policy_name="IvyRa1", policy_document=doc(
        {"Effect": "Allow", "Action": "dds:DescribeBackups", "Resource": "acs:dds:*:*:dbinstance/dds-ra1"})))
    refused(lambda: c.create_policy(ram.CreatePolicyRequest(policy_name="Bad", policy_document="{")), 400,
            "InvalidParameter")
    c.attach_policy_to_user(ram.AttachPolicyToUserRequest(policy_type="Custom", policy_name="IvyRa1",
                                                          user_name="ivy"))
    refused(lambda: c.attach_policy_to_user(ram.AttachPolicyToUserRequest(
        policy_type="Custom", policy_name="IvyRa1", user_name="ivy")), 409, "EntityAlreadyExists.User.Policy")
    refused(lambda: c.attach_policy_to_user(ram.AttachPolicyToUserRequest(
        policy_type="Custom", policy_name="NoSuchPolicy", user_name="ivy")), 404, "EntityNotExist.Policy")
    listed = c.list_policies_for_user(ram.ListPoliciesForUserRequest(user_name="ivy")).body.policies.policy
    assert [p.policy_name for p in listed] == ["IvyRa1"]

    k = c.create_access_key(ram.CreateAccessKeyRequest(user_name="ivy")).body.access_key
    assert k.status == "Active" and k.access_key_secret
    ivy = tea_client(server, (k.access_key_id, k.access_key_secret))
    assert ivy.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-ra1")).status_code == 200
    refused(lambda: ivy.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-ra2")), 403, "Forbidden.RAM")

    c.create_access_key(ram.CreateAccessKeyRequest(user_name="ivy"))
    refused(lambda: c.create_access_key(ram.CreateAccessKeyRequest(user_name="ivy")), 409,
            "LimitExceeded.User.AccessKey")
    keys = c.list_access_keys(ram.ListAccessKeysRequest(user_name="ivy")).body.access_keys.access_key
    assert len(keys) == 2 and all(not getattr(x, "access_key_secret", None) for x in keys)

    c.update_access_key(ram.UpdateAccessKeyRequest(user_access_key_id=k.access_key_id, status="Inactive",
                                                   user_name="ivy"))
    refused(lambda: ivy.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-ra1")), 400,
            "InvalidAccessKeyId.Inactive")
    c.update_access_key(ram.UpdateAccessKeyRequest(user_access_key_id=k.access_key_id, status="Active",
                                                   user_name="ivy"))
    assert ivy.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-ra1")).status_code == 200
    # Another user's key is not found under this user name.
    refused(lambda: c.delete_access_key(ram.DeleteAccessKeyRequest(user_access_key_id=ROOT_AK[0], user_name="ivy")),
            404, "EntityNotExist.User.AccessKey")
    refused(lambda: c.delete_user(ram.DeleteUserRequest(user_name="ivy")), 409, "DeleteConflict.User")
    c.delete_access_key(ram.DeleteAccessKeyRequest(user_access_key_id=k.access_key_id, user_name="ivy"))
    refused(lambda: ivy.describe_backups(dds.DescribeBackupsRequest(dbinstance_id="dds-ra1")), 404,
            "InvalidAccessKeyId.NotFound")


def test_groups_and_ram_permissions_of_ram_users(server):
    c = ram_client(server)
    c.create_user(ram.CreateUserRequest(user_name="admin-jo"))
    c.create_group(ram.CreateGroupRequest(group_name="ram-admins"))
    c.create_policy(ram.CreatePolicyRequest(policy_name="ManageUsers", policy_document=doc(
        {"Effect": "Allow", "Action": ["ram:CreateUser", "ram:GetUser"], "Resource": "*"})))
    c.attach_policy_to_group(ram.AttachPolicyToGroupRequest(policy_type="Custom", policy_name="ManageUsers",
                                                            group_name="ram-admins"))
    k = c.create_access_key(ram.CreateAccessKeyRequest(user_name="admin-jo")).body.access_key
    jo = ram_client(server, (k.access_key_id, k.access_key_secret))
    e = refused(lambda: jo.create_user(ram.CreateUserRequest(user_name="kim")), 403, "Forbidden.RAM")
    assert e.access_denied_detail["AuthAction"] == "ram:CreateUser"

    c.add_user_to_group(ram.AddUserToGroupRequest(group_name="ram-admins", user_name="admin-jo"))
    assert jo.create_user(ram.CreateUserRequest(user_name="kim")).body.user.user_name == "kim"
    # Allowed by the group policy to create users, not to give them keys.
    refused(lambda: jo.create_access_key(ram.CreateAccessKeyRequest(user_name="kim")), 403, "Forbidden.RAM")
    refused(lambda: c.delete_group(ram.DeleteGroupRequest(group_name="ram-admins")), 409, "DeleteConflict.Group")
    c.remove_user_from_group(ram.RemoveUserFromGroupRequest(group_name="ram-admins", user_name="admin-jo"))
    refused(lambda: jo.get_user(ram.GetUserRequest(user_name="kim")), 403, "Forbidden.RAM")
    c.detach_policy_from_group(ram.DetachPolicyFromGroupRequest(policy_type="Custom", policy_name="ManageUsers",
                                                                group_name="ram-admins"))
    c.delete_group(ram.DeleteGroupRequest(group_name="ram-admins"))
    c.delete_policy(ram.DeletePolicyRequest(policy_name="ManageUsers"))
    # Parts of RAM that ddsvault does not serve are an honest "not found", never a fake success.
    refused(lambda: c.list_roles(ram.ListRolesRequest()), 404, "InvalidApi.NotFound")
