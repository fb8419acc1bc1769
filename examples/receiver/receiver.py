"""A minimal webhook receiver that verifies vehicle-connect's signatures with the official
Standard Webhooks library (pip install standardwebhooks) and checks Basic auth.

    WEBHOOK_SECRET=whsec_... BASIC_USER=dms BASIC_PASSWORD=change-me python3 receiver.py 8787
"""
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = os.environ.get("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
USER, PASSWORD = os.environ.get("BASIC_USER"), os.environ.get("BASIC_PASSWORD")
webhook = Webhook(SECRET)
seen = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            event = webhook.verify(body, dict(self.headers))
        except WebhookVerificationError as e:
            print(f"REJECTED {self.path}: bad signature ({e})", flush=True)
            return self.reply(400)
        auth = self.headers.get("authorization", "")
        if USER and auth.startswith("Basic "):
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if (user, pw) != (USER, PASSWORD):
                print(f"REJECTED {self.path}: wrong Basic credentials", flush=True)
                return self.reply(401)
        # Delivery is at least once: dedupe on the webhook-id header (the event id).
        msg_id = self.headers["webhook-id"]
        key = (self.path, msg_id)
        dup = " (duplicate, ignored)" if key in seen else ""
        seen.add(key)
        vehicle = (event.get("data") or {}).get("vehicle") or {}
        print(f"RECEIVED {self.path} {event['type']} id={msg_id} vin={vehicle.get('vin')} "
              f"signature=valid auth={auth.split(' ')[0] or 'none'}{dup}", flush=True)
        self.reply(200)

    def reply(self, status):
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8787
    print(f"webhook receiver on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
