"""The etcd gateway client against real etcd members (TLS, client-cert auth)."""

from __future__ import annotations


import pytest
from helpers.etcd import etcd_cluster, free_port

from kubeha.etcd.gateway import EtcdClient, EtcdError, prefix_end


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


def client_for(etcd, endpoints=None, **kwargs) -> EtcdClient:
    return EtcdClient(endpoints or etcd.endpoints, etcd.ca_file, etcd.cert_file, etcd.key_file,
                      **kwargs)


@pytest.fixture
def client(etcd):
    with client_for(etcd) as c:
        yield c


def test_put_get(client):
    revision = client.put("/t/put/a", b"one")
    kv = client.get("/t/put/a")
    assert kv is not None
    assert (kv.key, kv.value, kv.mod_revision, kv.version) == ("/t/put/a", b"one", revision, 1)
    assert client.get("/t/put/missing") is None


def test_range_prefix_sorted_limited_and_revision(client):
    for name in ("c", "a", "b"):
        client.put(f"/t/range/{name}", name.encode())
    client.put("/t/range0", b"outside the prefix")
    kvs, revision = client.range_prefix("/t/range/")
    assert [kv.key for kv in kvs] == ["/t/range/a", "/t/range/b", "/t/range/c"]
    assert revision >= max(kv.mod_revision for kv in kvs)
    assert [kv.value for kv in client.range_prefix("/t/range/", limit=2)[0]] == [b"a", b"b"]
    latest = client.put("/t/x", b"")
    assert client.range_prefix("/t/range/nothing/") == ([], latest)


def test_prefix_end():
    assert prefix_end("/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


def test_create_only_once(client):
    assert client.create("/t/create", b"first") is True
    assert client.create("/t/create", b"second") is False
    assert client.get("/t/create").value == b"first"


def test_update_if_conflict_and_success(client):
    client.put("/t/cas", b"v1")
    kv = client.get("/t/cas")
    client.put("/t/cas", b"v2")  # someone else wrote in between
    ok, current, _ = client.update_if("/t/cas", b"v3", kv.mod_revision)
    assert not ok and current.value == b"v2"
    ok, current, revision = client.update_if("/t/cas", b"v3", current.mod_revision)
    assert ok and current.value == b"v3" and current.mod_revision == revision
    assert client.update_if("/t/cas-missing", b"x", 5) == (False, None, revision)


def test_delete(client):
    client.put("/t/del", b"v")
    kv = client.get("/t/del")
    assert client.delete("/t/del", mod_revision=kv.mod_revision - 1) is None
    assert client.delete("/t/del", mod_revision=kv.mod_revision).value == b"v"
    assert client.get("/t/del") is None
    client.put("/t/del", b"w")
    assert client.delete("/t/del").value == b"w"
    assert client.delete("/t/del") is None


def test_status_and_member_list(client, etcd):
    status = client.status(etcd.endpoints[0])
    assert status.version.startswith("3.")
    assert status.is_leader and status.raft_index > 0 and status.db_size > 0
    assert not status.is_learner
    [member] = client.member_list()
    assert member.id == status.member_id and member.name == "etcd0"
    assert member.client_urls == (etcd.endpoints[0],)
    assert member.peer_urls[0].startswith("https://127.0.0.1:")
    assert not member.is_learner


def test_failover_past_a_dead_endpoint(etcd):
    dead = f"https://127.0.0.1:{free_port()}"
    with client_for(etcd, [dead, *etcd.endpoints]) as c:
        c.put("/t/failover", b"ok")
        assert c.get("/t/failover").value == b"ok"


def test_one_line_error_when_nothing_answers(etcd):
    dead = [f"https://127.0.0.1:{free_port()}" for _ in range(2)]
    with client_for(etcd, dead) as c, pytest.raises(EtcdError) as caught:
        c.get("/t/anything")
    message = str(caught.value)
    assert "\n" not in message
    assert all(endpoint in message for endpoint in dead)
    with client_for(etcd, dead) as c, pytest.raises(EtcdError, match=dead[0]):
        c.status(dead[0])


def test_missing_tls_files_are_one_error(tmp_path):
    with pytest.raises(EtcdError, match="cannot load"):
        EtcdClient(["https://127.0.0.1:2379"], tmp_path / "ca", tmp_path / "c", tmp_path / "k")


def test_three_members_survive_losing_one(tmp_path):
    with etcd_cluster(tmp_path, members=3) as cluster, client_for(cluster) as c:
        assert len(c.member_list()) == 3
        cluster.stop(0)
        c.put("/t/three", b"still writable")
        assert c.get("/t/three").value == b"still writable"
        leaders = {c.status(endpoint).leader for endpoint in cluster.endpoints[1:]}
        assert len(leaders) == 1 and 0 not in leaders


def test_a_member_losing_leadership_or_stopping_sends_the_request_to_another_member():
    import json

    from kubeha.etcd.gateway import EtcdClient, _EndpointUnavailable

    for said in ("raft proposal dropped", "raft: stopped", "etcdserver: leader changed"):
        body = json.dumps({"error": said, "code": 2, "message": said})
        with pytest.raises(_EndpointUnavailable):
            EtcdClient._check_answer("https://m1:2379", "/v3/kv/put", 500, body)
    refused = json.dumps({"error": "etcdserver: permission denied", "code": 7, "message": "etcdserver: permission denied"})
    with pytest.raises(EtcdError, match="permission denied") as e:
        EtcdClient._check_answer("https://m1:2379", "/v3/kv/put", 500, refused)
    assert not isinstance(e.value, _EndpointUnavailable)
