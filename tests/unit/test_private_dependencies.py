"""Third-party internals the adapters rely on, checked against the installed aetcd and kazoo.

If an upgrade changes one of them, these tests fail and say what to do, before a backend fails at run time:

* ``discovery_etcd.security.SecureClient`` mirrors aetcd 1.0's ``Client.connect`` over a TLS channel, on the
  attributes aetcd's ``Client.__init__`` sets (docs/decisions/security-etcd-tls-client.md);
* ``discovery_zookeeper.connection`` drops a kazoo client without CloseSession through kazoo's connection handler
  and stop flag, and reads the negotiated session timeout kazoo keeps (docs/decisions/zookeeper-abort.md);
* ``discovery_zookeeper.persistent`` queues ``addWatch``/``removeWatches`` with kazoo's ``_call`` and hears their
  events by wrapping the connection handler's ``_read_watch_event`` (docs/decisions/zookeeper-watches.md).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
import threading

import aetcd
import aetcd.exceptions
import aetcd.watcher
import grpc  # type: ignore[import-untyped]
import pytest
from aetcd import rpc
from kazoo.client import KazooClient

from discovery_etcd.security import SecureClient

#: sha256 of ``inspect.getsource(aetcd.Client.connect)`` in aetcd 1.0.0, the code SecureClient mirrors.
AETCD_CONNECT_SHA256 = "739bd1375223094e19daf098d371f493cb667fb98c13e656b1e111a654af9264"
WHAT_TO_DO = (
    "SecureClient._connect_securely (backends/discovery_etcd/security.py) re-implements aetcd's Client.connect over"
    " a TLS channel: re-read the installed aetcd's Client.connect and __init__, mirror the change, then update the"
    " pin here (or drop SecureClient if aetcd now opens TLS channels itself)"
)


def _class_tree(cls: type) -> ast.ClassDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    node = tree.body[0]
    assert isinstance(node, ast.ClassDef)
    return node


def _names_on(tree: ast.AST, owner: str) -> set[str]:
    """Every ``<owner>.<name>`` read or written in ``tree``."""
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == owner
    }


def test_secure_client_uses_only_attributes_aetcd_client_sets() -> None:
    tree = _class_tree(SecureClient)
    methods = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    init = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    own = {
        target.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for target in node.targets
        if isinstance(target, ast.Attribute)
    }
    borrowed = _names_on(tree, "self") - methods - own
    assert "_connected" in borrowed and "_init_channel_attrs" in borrowed, "the scan found what SecureClient uses"
    client = aetcd.Client(host="127.0.0.1", port=1)
    missing = sorted(name for name in borrowed if not hasattr(client, name))
    assert not missing, f"aetcd.Client no longer has {missing}. {WHAT_TO_DO}"
    missing_rpc = sorted(name for name in _names_on(tree, "rpc") if not hasattr(rpc, name))
    assert not missing_rpc, f"aetcd.rpc no longer has {missing_rpc}. {WHAT_TO_DO}"


def test_aetcd_connect_is_the_code_secure_client_mirrors() -> None:
    digest = hashlib.sha256(inspect.getsource(aetcd.Client.connect).encode()).hexdigest()
    assert digest == AETCD_CONNECT_SHA256, f"aetcd's Client.connect changed. {WHAT_TO_DO}"


def test_aetcd_helpers_secure_client_calls() -> None:
    assert {"timeout", "metadata"} <= set(inspect.signature(aetcd.watcher.Watcher).parameters), WHAT_TO_DO
    # SecureClient.connect maps gRPC errors the way aetcd's own connect does, with aetcd's private mapping.
    unavailable = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="connection refused"
    )
    with pytest.raises(aetcd.exceptions.ConnectionFailedError):
        aetcd.exceptions._handle_exception(unavailable)


def test_kazoo_internals_the_zookeeper_backend_uses() -> None:
    client = KazooClient(hosts="127.0.0.1:1")
    try:
        what = "kazoo changed the internals discovery_zookeeper.connection uses (_drop_client, negotiated_timeout)"
        assert isinstance(client._stopped, threading.Event), what
        assert isinstance(client._connection.connection_stopped, threading.Event), what
        assert hasattr(client._connection, "_socket"), what
        assert isinstance(client._session_timeout, int), what
        what = "kazoo changed the internals discovery_zookeeper.persistent uses (_call, _read_watch_event)"
        assert list(inspect.signature(client._call).parameters) == ["request", "async_object"], what
        assert list(inspect.signature(client._connection._read_watch_event).parameters) == ["buffer", "offset"], what
        assert "_read_watch_event(" in inspect.getsource(type(client._connection)._read_socket), what
        assert hasattr(client, "_state") and callable(client.unchroot), what
    finally:
        client.close()
