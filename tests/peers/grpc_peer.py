"""gRPC peer for the end-to-end tests, written with gRPC's own library
(grpcio, C core), so nothing in it shares code with Ward or ward-testapp.

  grpc_peer.py serve --listen HOST:PORT
  grpc_peer.py call --connect HOST:PORT --messages N

Methods of the generic service ward.peer.Echo (raw bytes, no .proto):
  Unary  echoes its request;
  Bidi   echoes every message, then sets trailer x-peer-count: N;
  Fail   aborts with PERMISSION_DENIED "denied by the peer".
`call` runs all three and prints one JSON line with what came back.
"""
import argparse
import concurrent.futures
import json
import sys

import grpc

SERVICE = "ward.peer.Echo"


def serve(listen):
    def unary(request, context):
        return request

    def bidi(requests, context):
        count = 0
        for message in requests:
            count += 1
            yield message
        context.set_trailing_metadata((("x-peer-count", str(count)),))

    def fail(request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by the peer")

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    server.start()
    print(f"listening on {listen}", flush=True)
    server.wait_for_termination()


def call(connect, messages):
    result = {}
    with grpc.insecure_channel(connect) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        result["unary"] = unary(b"hello over grpc", timeout=30).decode()

        sent = [bytes([i % 256]) * (1 + i * 997 % 70000) for i in range(messages)]
        bidi = channel.stream_stream(f"/{SERVICE}/Bidi")
        call = bidi(iter(sent), timeout=60)
        received = list(call)
        result["received"] = len(received)
        result["mismatched"] = sum(1 for a, b in zip(sent, received) if a != b)
        result["bidi_code"] = call.code().name
        result["trailers"] = {k: v for k, v in call.trailing_metadata()}

        fail = channel.unary_unary(f"/{SERVICE}/Fail")
        try:
            fail(b"x", timeout=30)
            result["fail_code"] = "OK"
        except grpc.RpcError as error:
            result["fail_code"] = error.code().name
            result["fail_details"] = error.details()
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    c = sub.add_parser("call")
    c.add_argument("--connect", required=True)
    c.add_argument("--messages", type=int, default=20)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.listen)
    else:
        call(args.connect, args.messages)


if __name__ == "__main__":
    sys.exit(main())
