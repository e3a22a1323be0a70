"""A KCP client built on the `kcp` package (Python bindings over the reference ikcp.c), speaking
the pomelo protocol to Rookery's KCP acceptor: handshake, ack, a login request and a join.
Run by kcp.rs:  python kcp_client.py HOST PORT
Prints one line per step it checked; a mismatch raises (exit code 1)."""

import json
import socket
import sys
import time

from kcp import KCP

HOST, PORT = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.01)
kcp = KCP(conv_id=0x1234, no_delay=True, update_interval=10, resend_count=2,
          no_congestion_control=True, send_window_size=128, receive_window_size=128)


@kcp.outbound_handler
def _send(_kcp, data: bytes) -> None:
    sock.sendto(data, (HOST, PORT))


buf = bytearray()


def packet(kind: int, body: bytes) -> bytes:
    # pomelo packet: type (1 byte), body length (3 bytes, big-endian), body.
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def send(kind: int, body: bytes = b"") -> None:
    kcp.enqueue(packet(kind, body))
    kcp.flush()


def next_packet(deadline_s: float = 10.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if len(buf) >= 4:
            n = int.from_bytes(buf[1:4], "big")
            if len(buf) >= 4 + n:
                kind, body = buf[0], bytes(buf[4 : 4 + n])
                del buf[: 4 + n]
                return kind, body
        try:
            data, _ = sock.recvfrom(65536)
            kcp.receive(data)
            for chunk in kcp.get_all_received():
                buf.extend(chunk)
        except socket.timeout:
            pass
        kcp.update()
    raise TimeoutError("no packet from the server")


def request(req_id: int, route: str, body: dict) -> dict:
    # pomelo message: flag (type request = 0), id (base-128 varint), route (length + name), body.
    r = route.encode()
    msg = bytes([0x00, req_id]) + bytes([len(r)]) + r + json.dumps(body).encode()
    send(4, msg)
    while True:
        kind, data = next_packet()
        if kind == 3:  # heartbeat
            continue
        assert kind == 4, kind
        flag = data[0]
        assert flag >> 1 & 0x7 == 2, f"a response, got flag {flag:#x}"
        assert data[1] == req_id
        return json.loads(data[2:])


send(1, json.dumps({"sys": {"type": "python-kcp", "version": "0.1.6"}}).encode())
kind, body = next_packet()
assert kind == 1, kind
hs = json.loads(body)
assert hs["code"] == 200, hs
send(2)
print("ok handshake", flush=True)

assert request(1, "connector.entry.login", {"uid": "kay"}) == {"uid": "kay"}
assert request(2, "room.room.join", {"room": "k"}) == {"room": "k", "members": ["kay"]}
print("ok requests", flush=True)
print("done", flush=True)
