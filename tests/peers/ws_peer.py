"""RFC 6455 WebSocket peer for the end-to-end tests, written with the
`websockets` library (no code shared with Ward or ward-testapp).

  ws_peer.py serve --listen HOST:PORT     echoes every message, text or binary
  ws_peer.py call --connect HOST:PORT     sends a text message, a 100 KiB binary
             [--path /ws] [--messages N]  message, N more text messages (all sent
                                          before the first echo is read) and a
                                          ping; prints JSON
"""
import argparse
import asyncio
import json
import sys

import websockets


async def serve(listen):
    host, port = listen.rsplit(":", 1)

    async def echo(connection):
        async for message in connection:
            await connection.send(message)

    async with websockets.serve(echo, host, int(port), max_size=None):
        print(f"listening on {listen}", flush=True)
        await asyncio.Future()


async def call(connect, path, messages):
    result = {}
    async with websockets.connect(f"ws://{connect}{path}", max_size=None, open_timeout=30) as ws:
        await ws.send("hello through two sidecars")
        result["text"] = await asyncio.wait_for(ws.recv(), 30)
        blob = bytes(range(256)) * 400
        await ws.send(blob)
        echoed = await asyncio.wait_for(ws.recv(), 30)
        result["binary_ok"] = echoed == blob
        sent = [f"message {i} " + "x" * (i * 97) for i in range(messages)]
        for message in sent:
            await ws.send(message)
        echoes = [await asyncio.wait_for(ws.recv(), 30) for _ in sent]
        result["messages_echoed"] = sum(a == b for a, b in zip(sent, echoes))
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 30)
        result["pong"] = True
    result["close_code"] = ws.close_code
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    c = sub.add_parser("call")
    c.add_argument("--connect", required=True)
    c.add_argument("--path", default="/ws")
    c.add_argument("--messages", type=int, default=0)
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.listen))
    else:
        asyncio.run(call(args.connect, args.path, args.messages))


if __name__ == "__main__":
    sys.exit(main())
