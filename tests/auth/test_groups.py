"""Sharing with groups from the identity provider's group claim: a group share grants, removing
the group from the share revokes at once, and a user the provider takes out of the group loses
access with their next token."""

from __future__ import annotations

import pytest
from fedcompute import Executor
from fedcompute.errors import NotFoundError, ServiceError

from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(300)


def cube(x):
    return x ** 3


def _status(call) -> int:
    try:
        call()
    except ServiceError as exc:
        return exc.status
    return 200


def test_group_shares_grant_and_removals_revoke(auth_stack, idp):
    alice = auth_stack.client()
    gail = idp.client(auth_stack.service_url, "gail", ["physics"])
    hank = idp.client(auth_stack.service_url, "hank", ["chemistry"])
    # register_function(group=...) is Globus Compute's spelling of a group share.
    fid = alice.register_function(cube, group="physics")
    assert alice.get_function(fid)["shared_with_groups"] == ["physics"]
    endpoint = alice.register_endpoint("physics-only", shared_with_groups=["physics"])
    eid = endpoint["endpoint_id"]
    assert alice.get_endpoint_metadata(eid)["shared_with_groups"] == ["physics"]

    # Granted to the group's members only.
    assert gail.get_function(fid)["owner"] == "alice"
    assert eid in {e["endpoint_id"] for e in gail.get_endpoints()}
    assert _status(lambda: hank.get_function(fid)) == 404
    assert eid not in {e["endpoint_id"] for e in hank.get_endpoints()}
    assert _status(lambda: hank.get_endpoint_status(eid)) == 404
    # A member may run alice's shared function on an endpoint shared with a group of theirs.
    alice.update_endpoint(auth_stack.endpoint_id, shared_with_groups=["lab", "physics"])
    try:
        tid = gail.run(3, endpoint_id=auth_stack.endpoint_id, function_id=fid)
        wait_for(lambda: not gail.get_task(tid)["pending"], 120, "gail's task")
        assert gail.get_result(tid) == 27
        with pytest.raises(NotFoundError):
            hank.run(3, endpoint_id=auth_stack.endpoint_id, function_id=fid)
        # Sharing is the owner's: a member cannot change or delete what is shared with them.
        assert _status(lambda: gail.share_function(fid, shared_with_groups=["chemistry"])) \
            == 404
        assert _status(lambda: gail.delete_endpoint(eid)) == 404

        # The owner takes the group off: refused at once.
        alice.share_function(fid, shared_with_groups=[])
        assert _status(lambda: gail.get_function(fid)) == 404
        with pytest.raises(NotFoundError, match="function"):
            gail.run(3, endpoint_id=auth_stack.endpoint_id, function_id=fid)
    finally:
        alice.update_endpoint(auth_stack.endpoint_id, shared_with_groups=["lab"])

    # The provider takes gail out of "physics": her next token no longer carries it.
    assert gail.get_endpoint_status(eid)["endpoint_id"] == eid
    idp.set_groups("gail", [])
    wait_for(lambda: _status(lambda: gail.get_endpoint_status(eid)) == 404, 60,
             "gail's refreshed token to lose the group")
    assert gail.whoami()["groups"] == []
    alice.delete_endpoint(eid)


def test_static_tokens_have_no_groups(auth_stack):
    alice = auth_stack.client()
    fid = alice.register_function(cube, shared_with_groups=["lab"])
    ivy = auth_stack.client(auth_stack.create_user("ivy"))
    assert ivy.whoami()["groups"] == []
    assert _status(lambda: ivy.get_function(fid)) == 404
    with pytest.raises(NotFoundError, match="endpoint"), Executor(auth_stack.endpoint_id,
                                                                 client=ivy) as ex:
        ex.submit(cube, 2).result(timeout=60)
