"""Proxy RSS per idle connection, for listeners the harness has no scenario
for (an edgeplane `tcp` listener in front of an MQTT broker, say).

Usage: idle_connections.py CONNECTIONS PORT PROXY_PID [BATCH]

Opens CONNECTIONS MQTT 3.1.1 connections to PORT (keep-alive 600 s), waits
for each CONNACK, holds them, and prints the proxy's RSS growth per
connection. Connections are opened BATCH at a time (default 20).
"""

import asyncio
import sys

N, PORT, PID = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
BATCH = int(sys.argv[4]) if len(sys.argv) > 4 else 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def connect_packet(client_id):
    body = b"\x00\x04MQTT\x04\x02" + (600).to_bytes(2, "big") + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


async def open_one(index, held):
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(connect_packet(b"idle-%d" % index))
    await writer.drain()
    connack = await reader.readexactly(4)
    if connack[3] != 0:
        raise SystemExit(f"CONNECT refused: {connack!r}")
    held.append((reader, writer))


async def main():
    held = []
    before = rss_kib(PID)
    for start in range(0, N, BATCH):
        await asyncio.gather(*(open_one(i, held) for i in range(start, min(N, start + BATCH))))
    await asyncio.sleep(1)
    after = rss_kib(PID)
    print(f"{N} idle connections: RSS {before} KiB -> {after} KiB, {(after - before) * 1024 / N:.0f} bytes per connection")


asyncio.run(main())
