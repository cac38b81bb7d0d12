"""Receives credbroker's webhook deliveries, checks each one's signature,
and prints each event once.

    CREDBROKER_WEBHOOK_SECRET=whsec_... python3 client/python/examples/webhook_receiver.py PORT [COUNT]

It listens on 127.0.0.1:PORT (put a TLS-terminating proxy in front of it
to take deliveries from another host: the broker sends them to https URLs
only, but to loopback). It says "listening" when it is, answers 204 to a
delivery whose signature verifies and 401 to any other, and prints a
line per event: its kind, what it is about, and its id. A delivery can
come more than once (the broker delivers at least once): it prints an
event the first time only. With COUNT, it stops after that many events.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE = 300  # seconds a delivery's timestamp may be off: older ones are replays
MAX_BODY = 1 << 20


def verify(secret: str, headers, body: bytes, now: float) -> bool:
    """The check every receiver makes: the signature over the timestamp and
    the body as received, compared in constant time, and a fresh timestamp."""
    timestamp = headers.get("Credbroker-Timestamp", "")
    if not timestamp.isdigit():
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    if not hmac.compare_digest(headers.get("Credbroker-Signature", ""), "v1=" + mac.hexdigest()):
        return False
    return abs(now - int(timestamp)) <= TOLERANCE


def main() -> int:
    if len(sys.argv) not in (2, 3) or not all(a.isdigit() for a in sys.argv[1:]):
        print("usage: webhook_receiver.py PORT [COUNT]", file=sys.stderr)
        return 2
    secret = os.environ.get("CREDBROKER_WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        print("set CREDBROKER_WEBHOOK_SECRET to the webhook's signing secret", file=sys.stderr)
        return 2
    count = int(sys.argv[2]) if len(sys.argv) == 3 else None
    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            if not verify(secret, self.headers, body, time.time()):
                print("refused a delivery whose signature does not verify", file=sys.stderr, flush=True)
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            self.send_response(204)
            self.end_headers()
            if event["id"] in seen:
                return  # delivered again: handled already
            seen.add(event["id"])
            about = event.get("account") or event.get("caller_key", "")
            print(f"{event['kind']} {about} (event {event['id']})", flush=True)
            if count is not None and len(seen) >= count:
                threading.Thread(target=self.server.shutdown).start()

        def log_message(self, *args):
            pass  # one line per event is enough

    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("listening", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
