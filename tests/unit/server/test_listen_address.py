"""Listen addresses as ``serve`` names them in its errors, and the server options."""

from __future__ import annotations

import pytest

from quota_service.server.app import (
    MAX_METADATA_BYTES,
    MAX_RECEIVE_MESSAGE_BYTES,
    AddressInUse,
    ListenAddress,
    server_options,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("listen", "host", "port", "shown"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051, "127.0.0.1:50051"),
        ("[::1]:50051", "::1", 50051, "[::1]:50051"),
        ("localhost:50051", "localhost", 50051, "localhost:50051"),
        ("0.0.0.0:8443", "0.0.0.0", 8443, "0.0.0.0:8443"),
        ("[::]:0", "::", 0, "[::]:0"),
        (":50051", "", 50051, ":50051"),
    ],
)
def test_tcp_addresses_parse_and_show_as_written(listen: str, host: str, port: int, shown: str) -> None:
    address = ListenAddress.parse(listen)
    assert address == ListenAddress(host, port)
    assert str(address) == shown
    assert str(AddressInUse(address)) == f"{shown} is already in use"


@pytest.mark.parametrize("listen", ["unix:/tmp/quota.sock", "unix:quota.sock", "::1:50051", "localhost", "h:99999"])
def test_what_is_not_host_port_is_left_to_grpc(listen: str) -> None:
    assert ListenAddress.parse(listen) is None


def test_every_interface() -> None:
    assert all(ListenAddress(h, 1).every_interface for h in ("", "0.0.0.0", "::"))
    assert not ListenAddress("127.0.0.1", 1).every_interface


def test_the_port_is_shared_only_on_request_and_sizes_are_bounded() -> None:
    assert ("grpc.so_reuseport", 0) in server_options()
    assert ("grpc.so_reuseport", 1) in server_options(reuse_port=True)
    options = dict(server_options())
    assert options["grpc.max_receive_message_length"] == MAX_RECEIVE_MESSAGE_BYTES == 1 << 20
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == MAX_METADATA_BYTES
