"""A webhook receiver for outboxd in Python, verifying with the official
Standard Webhooks library (`standardwebhooks` on PyPI). Like
examples/receiver.rs: it answers 200 for a verified webhook (processed, or a
duplicate: outboxd delivers at least once) and 400 for one that is not
signed with the secret; anything but 2xx makes outboxd retry.

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... LISTEN_ADDR=127.0.0.1:8080 python3 examples/receivers/receiver.py

Prints one JSON line when it listens ({"listening": "127.0.0.1:8080"}; port
0 picks a free one) and one per new verified webhook ({"id", "type",
"data"}). The set of seen ids lives in memory here; a real receiver records
them in its database, in the transaction that processes the event.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
seen = set()
seen_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.answer(413, "too large")
        body = self.rfile.read(length)
        try:
            # Checks webhook-signature over webhook-id, webhook-timestamp
            # (within 5 minutes) and the exact body, then parses the JSON.
            payload = webhook.verify(body, dict(self.headers))
        except (WebhookVerificationError, ValueError) as error:
            return self.answer(400, f"invalid: {error}")
        event_id = self.headers["webhook-id"]
        with seen_lock:
            new = event_id not in seen
            seen.add(event_id)
        if new:
            event = {"id": event_id, "type": payload.get("type"), "data": payload.get("data")}
            print(json.dumps(event), flush=True)
        self.answer(200, "ok" if new else "duplicate")

    def answer(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # one line per event on stdout is the output


host, port = os.environ.get("LISTEN_ADDR", "127.0.0.1:8080").rsplit(":", 1)
server = ThreadingHTTPServer((host, int(port)), Handler)
print(json.dumps({"listening": "%s:%d" % server.server_address[:2]}), flush=True)
server.serve_forever()
