"""gRPC health peer for the end-to-end tests, written with gRPC's own
library (grpcio, C core), so nothing in it shares code with Ward.

  grpc_health_peer.py serve --listen HOST:PORT --status-file PATH
  grpc_health_peer.py check --connect HOST:PORT [--service NAME]

`serve` answers grpc.health.v1.Health/Check with the status named in
PATH (SERVING, NOT_SERVING; re-read on every call). The two messages are
encoded by hand (one varint field), as grpcio-health-checking is not
installed. `check` calls it once and prints one JSON line: the gRPC code
and, when OK, the status number.
"""
import argparse
import concurrent.futures
import json
import sys

import grpc

STATUSES = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2}


def serve(listen, status_file):
    def check(request, context):
        with open(status_file) as f:
            name = f.read().strip()
        return bytes([0x08, STATUSES[name]])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check)},
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(listen)
    server.start()
    print(f"listening on {listen}", flush=True)
    server.wait_for_termination()


def check(connect, service):
    request = b""
    if service:
        request = bytes([0x0A, len(service)]) + service.encode()
    with grpc.insecure_channel(connect) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            answer = call(request, timeout=10)
            status = answer[1] if len(answer) == 2 and answer[0] == 0x08 else 0
            result = {"code": "OK", "status": status}
        except grpc.RpcError as error:
            result = {"code": error.code().name, "details": error.details()}
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--status-file", required=True)
    c = sub.add_parser("check")
    c.add_argument("--connect", required=True)
    c.add_argument("--service", default="")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.listen, args.status_file)
    else:
        check(args.connect, args.service)


if __name__ == "__main__":
    sys.exit(main())
