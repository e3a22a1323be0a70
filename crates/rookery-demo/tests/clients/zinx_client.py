"""A zinx client written from zinx's documented data pack (zpack, "zinx_pack_tlv_big_endian":
msgID u32, data length u32, big-endian, then the data), driving the demo through Rookery's
zinx acceptor. Run by zinx.rs:  python3 zinx_client.py HOST PORT [CA_FILE]
(with CA_FILE: over TLS, the server's certificate checked against it). Prints one line per step it checked; a mismatch raises (exit code 1)."""

import json
import socket
import ssl
import struct
import sys

HOST, PORT = sys.argv[1], int(sys.argv[2])
CA = sys.argv[3] if len(sys.argv) > 3 else None


class Client:
    def __init__(self):
        self.sock = socket.create_connection((HOST, PORT), timeout=10)
        if CA:
            ctx = ssl.create_default_context(cafile=CA)
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.stash = []

    def send(self, msg_id, body):
        data = json.dumps(body).encode()
        self.sock.sendall(struct.pack(">II", msg_id, len(data)) + data)

    def _read(self):
        while len(self.buf) < 8 or len(self.buf) < 8 + struct.unpack(">II", self.buf[:8])[1]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buf += chunk
        msg_id, n = struct.unpack(">II", self.buf[:8])
        data, self.buf = self.buf[8 : 8 + n], self.buf[8 + n :]
        return msg_id, data

    def expect(self, msg_id):
        """The next message with this msgID (others are kept for later)."""
        for i, (m, d) in enumerate(self.stash):
            if m == msg_id:
                del self.stash[i]
                return d
        while True:
            m, d = self._read()
            if m == msg_id:
                return d
            self.stash.append((m, d))

    def call(self, msg_id, body, reply_id=None):
        self.send(msg_id, body)
        return json.loads(self.expect(reply_id or msg_id))


zed = Client()
assert zed.call(1, {"uid": "zed"}) == {"uid": "zed"}
zara = Client()
assert zara.call(1, {"uid": "zara"}) == {"uid": "zara"}
print("ok login", flush=True)

# join answers with msgID 102 ([zinx.replies]); the onJoin push is 201 ([zinx.pushes]).
assert zed.call(2, {"room": "z"}, 102) == {"room": "z", "members": ["zed"]}
joined = zara.call(2, {"room": "z"}, 102)
assert sorted(joined["members"]) == ["zara", "zed"], joined
assert json.loads(zed.expect(201)) == {"room": "z", "uid": "zara"}
print("ok join", flush=True)

zara.send(3, {"room": "z", "text": "hi"})
heard = {"room": "z", "from": "zara", "text": "hi"}
assert json.loads(zed.expect(202)) == heard
assert json.loads(zara.expect(202)) == heard
zara.expect(3)  # say's (empty) answer
print("ok say", flush=True)

# zinx's heartbeat (msgID 99999) comes back as it went.
zed.sock.sendall(struct.pack(">II", 99999, 4) + b"ping")
assert zed.expect(99999) == b"ping"
print("ok heartbeat", flush=True)

err = zed.call(77, {})
assert err["code"] == "RK-404", err
print("ok unknown msgID", flush=True)
print("done", flush=True)
