#!/usr/bin/env python3
"""A tiny etcd v3 client that speaks only HTTP/JSON (etcd's gRPC gateway), with nothing but
the Python standard library: what HA and monitoring scripts do. It works against etcd 3.4 and
against Ballast's client port alike.

    etcd_http.py --endpoint http://127.0.0.1:7701 put KEY VALUE
    etcd_http.py --endpoint ... get KEY [--prefix]
    etcd_http.py --endpoint ... watch KEY [--prefix] [--count N]
    etcd_http.py --endpoint ... --user NAME:PASSWORD get KEY

Keys and values are base64 on the wire, 64-bit integers are strings; errors arrive as
{"error": ..., "code": ...} with an HTTP status, printed to stderr with exit status 1.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text or "").decode(errors="replace")


def prefix_end(key):
    """The first key after every key starting with `key` (etcd's range end for a prefix)."""
    raw = bytearray(key.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode()
        raw.pop()
    return base64.b64encode(b"\0").decode()


class Gateway:
    def __init__(self, endpoint, token=None, timeout=10):
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.timeout = timeout

    def open(self, path, body, timeout=None):
        request = urllib.request.Request(
            self.endpoint + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        if self.token:
            request.add_header("Authorization", self.token)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as error:
            detail = json.loads(error.read() or b"{}")
            sys.exit(f"HTTP {error.code}: {detail.get('error') or detail}")

    def call(self, path, body):
        with self.open(path, body) as answer:
            return json.loads(answer.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--user", help="NAME:PASSWORD; logs in first")
    sub = parser.add_subparsers(dest="command", required=True)
    put = sub.add_parser("put")
    put.add_argument("key")
    put.add_argument("value")
    get = sub.add_parser("get")
    get.add_argument("key")
    get.add_argument("--prefix", action="store_true")
    watch = sub.add_parser("watch")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true")
    watch.add_argument("--count", type=int, default=0, help="stop after N events")
    args = parser.parse_args()

    gateway = Gateway(args.endpoint)
    if args.user:
        name, _, password = args.user.partition(":")
        answer = gateway.call("/v3/auth/authenticate", {"name": name, "password": password})
        gateway.token = answer["token"]

    if args.command == "put":
        answer = gateway.call("/v3/kv/put", {"key": b64(args.key), "value": b64(args.value)})
        print(answer["header"]["revision"])
    elif args.command == "get":
        body = {"key": b64(args.key)}
        if args.prefix:
            body["range_end"] = prefix_end(args.key)
        answer = gateway.call("/v3/kv/range", body)
        for kv in answer.get("kvs", []):
            print(f"{unb64(kv['key'])}={unb64(kv.get('value'))}")
    else:
        create = {"key": b64(args.key)}
        if args.prefix:
            create["range_end"] = prefix_end(args.key)
        seen = 0
        # One JSON object per line for as long as the watch runs.
        with gateway.open("/v3/watch", {"create_request": create}, timeout=3600) as stream:
            for line in stream:
                message = json.loads(line)
                if "error" in message:
                    sys.exit(f"watch failed: {message['error']}")
                result = message["result"]
                if result.get("created"):
                    print("CREATED", flush=True)
                if result.get("canceled"):
                    sys.exit(f"watch canceled: {result.get('cancel_reason', '')}")
                for event in result.get("events", []):
                    kind = event.get("type", "PUT")
                    kv = event["kv"]
                    print(f"{kind} {unb64(kv['key'])} {unb64(kv.get('value'))}", flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        return


if __name__ == "__main__":
    main()
