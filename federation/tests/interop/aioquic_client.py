#!/usr/bin/env python3
"""An independent QUIC client (aioquic) against a Caliopen mesh endpoint.

Usage: aioquic_client.py HOST PORT SERVER_NAME CA_PEM [CERT_PEM KEY_PEM]

Connects with ALPN caliopen/1, verifies the server against the association
root, optionally presents a member certificate, sends one mesh Hello frame on
a bidirectional stream and prints one JSON line:
  {"handshake": true, "response_hex": "..."}   or
  {"handshake": false, "error": "..."}
Exit status 0 when a response frame came back, 1 otherwise.
"""
import asyncio
import json
import ssl
import struct
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num: int, data: bytes) -> bytes:
    return varint((num << 3) | 2) + varint(len(data)) + data


def hello_frame(member_id: str) -> bytes:
    # Hello { protocol_version = 1; software_version = "aioquic-interop"; member_id }
    hello = varint((1 << 3) | 0) + varint(1)
    hello += field_bytes(2, b"0.0.0-aioquic")
    hello += field_bytes(5, member_id.encode())
    request = field_bytes(1, hello)  # Request.hello
    return struct.pack(">I", len(request)) + request


async def main() -> int:
    host, port, server_name, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    config = QuicConfiguration(is_client=True, alpn_protocols=["caliopen/1"], server_name=server_name)
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_verify_locations(cafile=ca)
    member = "anonymous"
    if len(sys.argv) >= 7:
        config.load_cert_chain(sys.argv[5], sys.argv[6])
        member = "pyclient"
    try:
        async with connect(host, port, configuration=config, wait_connected=True) as client:
            reader, writer = await client.create_stream()
            writer.write(hello_frame(member))
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), timeout=5)
            if not data:
                raise RuntimeError("stream closed without a response")
            print(json.dumps({"handshake": True, "response_hex": data.hex()}))
            return 0
    except Exception as e:  # noqa: BLE001 - report any failure as one JSON line
        print(json.dumps({"handshake": False, "error": f"{type(e).__name__}: {e}"}))
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(asyncio.wait_for(main(), timeout=20)))
