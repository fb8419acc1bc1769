#!/usr/bin/env python3
"""AutoDMS: a made-up dealer-management-system REST API, as a test peer for ApiConnection.

Serves the API of openapi.yaml (beside this file) on 127.0.0.1, and checks every request to a
documented path with openapi-core, an OpenAPI request validator independent of the code under
test. Run it with the venv of scripts/dms-venv.sh:

    "$(scripts/dms-venv.sh)" tests/peers/dms/server.py --port 0 --ready-file /tmp/port \\
        --client-id dealer --client-secret s3cret [--token-ttl 3600]

Once it listens it writes its port to --ready-file (written whole, then renamed into place).
It stops on SIGTERM/SIGINT, or by itself when the process that started it exits.

How a request to a documented path is handled, in order:
  1. openapi-core validates it (parameters, body, content type; see README.md for its limits).
     The outcome is recorded in the log whatever happens next.
  2. /v1: a bearer token issued by /oauth/token, unexpired and not revoked, or 401 with
     `WWW-Authenticate: Bearer error="invalid_token"`. /oauth/token: the client's credentials
     (HTTP Basic or form fields), checked after validation.
  3. An invalid request: 400 `{"errors": [{"in", "field", "message"}]}`.
  4. An injected failure (POST /_admin/fail) that matches: its status; nothing applied or stored.
  5. /v1: a request whose (Idempotency-Key, method, path) was answered before gets that stored
     answer again, with `Idempotent-Replayed: true`, and is not applied (a replay in the log).
  6. Applied; the answer is stored under its idempotency key unless it is a 5xx.
A path that is not in the document: 404 (405 for a known path with another method), logged as
invalid. Responses are checked against the document too (`responseErrors` in the log: a bug
here, not in the client).

Admin endpoints, not in the document, not validated, not logged, no auth:
  GET  /_admin/state          {"vehicles": {id: {...}}, "requests": [...], "tokensIssued": n}
  POST /_admin/fail           {"method": "PUT", "pathPrefix": "/v1/vehicles/", "status": 500,
                               "times": 1, "skip": 0, "retryAfter": 2}  (method, pathPrefix, times,
                               retryAfter optional; rules are used in the order given)
  POST /_admin/expire-tokens  every token issued so far stops working
  POST /_admin/reset          forgets vehicles, the log, stored answers, failure rules and
                              counters; tokens issued so far stay valid
"""

import argparse
import base64
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote_plus

# openapi-core warns on every check of the oauth2 scheme, which it does not support (the server
# checks the token itself).
warnings.filterwarnings("ignore", message="Unsupported scheme type")

try:
    from openapi_core import OpenAPI
    from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
    from openapi_core.templating.paths.exceptions import (
        OperationNotFound,
        PathNotFound,
        ServerNotFound,
    )
    from openapi_core.validation.request.exceptions import (
        MissingRequiredRequestBody,
        ParameterValidationError,
        RequestBodyValidationError,
        SecurityValidationError,
    )
    from openapi_core.validation.schemas.exceptions import InvalidSchemaValue
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response
except ImportError as e:  # pragma: no cover
    sys.exit(
        f"server.py: {e}; run it with the venv's python: \"$(scripts/dms-venv.sh)\" {sys.argv[0]}"
    )

SPEC_PATH = Path(__file__).resolve().parent / "openapi.yaml"
MAX_MESSAGE = 400


def now_iso():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short(text):
    text = str(text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def json_response(status, body, headers=None):
    data = b"" if body is None else json.dumps(body).encode()
    resp = Response(data, status=status, headers=headers or {})
    if body is None:
        del resp.headers["Content-Type"]
    else:
        resp.content_type = "application/json"
    return resp


# --- validation errors as JSON -------------------------------------------------------------


def schema_errors(location, base_field, exc):
    """One entry per jsonschema error of an InvalidSchemaValue (never the whole value: a
    photo's bytes would be in it)."""
    out = []
    for err in getattr(exc, "schema_errors", None) or []:
        path = [str(p) for p in err.absolute_path]
        field = ".".join([p for p in [base_field] if p] + path)
        # `required` and `additionalProperties` name the property in their message only.
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [p for p in err.validator_value if p not in err.instance]
            if missing:
                field = ".".join([p for p in [field] if p] + [missing[0]])
        elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
            props = err.schema.get("properties", {})
            extra = [k for k in err.instance if k not in props]
            if extra:
                field = ".".join([p for p in [field] if p] + [str(extra[0])])
        out.append({"in": location, "field": field, "message": short(err.message)})
    if not out:
        out.append({"in": location, "field": base_field, "message": short(exc)})
    return out


def describe(exc):
    """openapi-core's exception as a list of {"in", "field", "message"}."""
    cause = exc.__cause__
    if isinstance(exc, (PathNotFound, ServerNotFound)):
        return [{"in": "path", "field": "", "message": short(exc)}]
    if isinstance(exc, OperationNotFound):
        return [{"in": "method", "field": "", "message": short(exc)}]
    if isinstance(exc, SecurityValidationError):
        return [{"in": "security", "field": "", "message": short(exc)}]
    if isinstance(exc, ParameterValidationError):
        if isinstance(cause, InvalidSchemaValue):
            return schema_errors(exc.location, exc.name, cause)
        message = f"{exc}: {cause}" if cause is not None else str(exc)
        return [{"in": exc.location, "field": exc.name, "message": short(message)}]
    if isinstance(exc, MissingRequiredRequestBody):
        return [{"in": "body", "field": "", "message": "missing required request body"}]
    if isinstance(exc, RequestBodyValidationError):
        if isinstance(cause, InvalidSchemaValue):
            return schema_errors("body", "", cause)
        return [{"in": "body", "field": "", "message": short(cause if cause else exc)}]
    return [{"in": "request", "field": "", "message": short(f"{type(exc).__name__}: {exc}")}]


# --- the server ----------------------------------------------------------------------------


class Dms:
    def __init__(self, client_id, client_secret, token_ttl):
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.api = OpenAPI.from_file_path(str(SPEC_PATH))
        # openapi-core's objects are built lazily; build them now, not from two threads at once.
        _ = self.api.request_validator, self.api.response_validator
        self.lock = threading.Lock()
        self.tokens = {}  # token -> {"expires": monotonic, "revoked": bool}
        self.reset()

    def reset(self):
        # Tokens are kept: a client that holds one goes on working.
        self.vehicles = {}
        self.requests = []
        self.idempotency = {}  # (key, method, path) -> (status, headers, body)
        self.fail_rules = []
        self.tokens_issued = 0
        self.next_vehicle = 1
        self.next_photo = 1

    # WSGI entry point.
    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            if request.path.startswith("/_admin/"):
                response = self.admin(request)
            else:
                response = self.api_call(request)
        except Exception:  # a bug here: say so, loudly
            traceback.print_exc()
            response = json_response(500, {"error": "server_bug", "message": traceback.format_exc()})
        return response(environ, start_response)

    # --- admin ---

    def admin(self, request):
        path, method = request.path, request.method
        with self.lock:
            if path == "/_admin/state" and method == "GET":
                return json_response(200, self.state())
            if path == "/_admin/fail" and method == "POST":
                try:
                    rule = json.loads(request.get_data() or b"{}")
                    rule = {
                        "method": (rule.get("method") or "").upper() or None,
                        "pathPrefix": rule.get("pathPrefix") or "/",
                        "status": int(rule["status"]),
                        "times": int(rule.get("times", 1)),
                        "skip": int(rule.get("skip", 0)),
                        "retryAfter": rule.get("retryAfter"),
                    }
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    return json_response(400, {"error": f"bad rule: {e!r}"})
                self.fail_rules.append(rule)
                return json_response(200, {"rules": self.fail_rules})
            if path == "/_admin/expire-tokens" and method == "POST":
                for token in self.tokens.values():
                    token["revoked"] = True
                return json_response(200, {"expired": len(self.tokens)})
            if path == "/_admin/reset" and method == "POST":
                self.reset()
                return json_response(200, {"reset": True})
        return json_response(404, {"error": f"no admin endpoint {method} {path}"})

    def state(self):
        return {
            "vehicles": self.vehicles,
            "requests": self.requests,
            "tokensIssued": self.tokens_issued,
        }

    # --- the API ---

    def validate(self, request):
        """(valid, errors, status when the operation is not in the document)."""
        try:
            found = list(self.api.iter_request_errors(WerkzeugOpenAPIRequest(request)))
        except Exception as e:  # openapi-core itself failed on this request
            return False, [{"in": "request", "field": "", "message": short(
                f"openapi-core could not check this request: {type(e).__name__}: {e}")}], None
        errors, status = [], None
        for exc in found:
            if isinstance(exc, (PathNotFound, ServerNotFound)):
                status = 404
            elif isinstance(exc, OperationNotFound):
                status = status or 405
            errors.extend(describe(exc))
        return not errors, errors, status

    def api_call(self, request):
        valid, errors, unknown = self.validate(request)
        entry = {
            "method": request.method,
            "path": request.path,
            "status": None,
            "idempotencyKey": request.headers.get("Idempotency-Key"),
            "replay": False,
            "valid": valid,
            "errors": errors,
            "time": now_iso(),
            "contentType": request.headers.get("Content-Type"),
            "injected": False,
            "authError": None,
            "responseErrors": [],
        }
        if unknown is not None:
            response = json_response(unknown, {"errors": errors})
        elif request.path == "/oauth/token":
            response = self.token_endpoint(request, valid, errors, entry)
        else:
            response = self.v1(request, valid, errors, entry)
        entry["status"] = response.status_code
        # An injected status is not in the document.
        if unknown is None and not entry["injected"]:
            entry["responseErrors"] = self.check_response(request, response)
        with self.lock:
            self.requests.append(entry)
        return response

    def check_response(self, request, response):
        try:
            found = list(self.api.iter_response_errors(
                WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(response)))
        except Exception as e:
            found = [e]
        out = []
        for exc in found:
            cause = exc.__cause__
            text = str(exc)
            out.append(short(f"{text}: {cause}" if cause and str(cause) not in text else text))
        if out:
            print(f"server.py: response not as documented: {request.method} {request.path}: "
                  f"{out}", file=sys.stderr, flush=True)
        return out

    def take_failure(self, request):
        """The injected failure for this request, if a rule matches (under the lock)."""
        for rule in self.fail_rules:
            if rule["times"] <= 0:
                continue
            if rule["method"] and rule["method"] != request.method:
                continue
            if not request.path.startswith(rule["pathPrefix"]):
                continue
            if rule["skip"] > 0:
                # Let this many matching requests through first.
                rule["skip"] -= 1
                continue
            rule["times"] -= 1
            headers = {}
            if rule["retryAfter"] is not None:
                headers["Retry-After"] = str(rule["retryAfter"])
            return json_response(rule["status"], {
                "error": "injected", "message": f"failure injected by /_admin/fail ({rule['status']})"
            }, headers)
        return None

    def token_endpoint(self, request, valid, errors, entry):
        if not valid:
            return json_response(400, {"errors": errors})
        form = request.form
        basic = None
        auth = request.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(auth[6:].strip(), validate=True).decode()
                user, _, password = raw.partition(":")
                basic = (user, password)
            except (ValueError, UnicodeDecodeError):
                return json_response(400, {"error": "invalid_request",
                                           "error_description": "malformed Basic credentials"})
        in_form = "client_id" in form or "client_secret" in form
        if basic and in_form:
            return json_response(400, {"error": "invalid_request", "error_description":
                                       "use one way to authenticate the client, not two"})
        if basic:
            user, password = basic
            # RFC 6749 2.3.1 form-encodes both before Basic; accept them encoded or not.
            ok = (user, password) == (self.client_id, self.client_secret) or (
                unquote_plus(user), unquote_plus(password)) == (self.client_id, self.client_secret)
        else:
            ok = (form.get("client_id"), form.get("client_secret")) == (
                self.client_id, self.client_secret)
        if not ok:
            entry["authError"] = "invalid_client"
            headers = {"WWW-Authenticate": 'Basic realm="autodms"'} if basic else {}
            return json_response(401, {"error": "invalid_client"}, headers)
        with self.lock:
            failure = self.take_failure(request)
            if failure is not None:
                entry["injected"] = True
                return failure
            token = secrets.token_urlsafe(24)
            self.tokens[token] = {"expires": time.monotonic() + self.token_ttl, "revoked": False}
            self.tokens_issued += 1
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl}
        if form.get("scope"):
            body["scope"] = form["scope"]
        return json_response(200, body, {"Cache-Control": "no-store"})

    def check_token(self, request):
        """None when the bearer token is good, else why not."""
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            return "missing"
        with self.lock:
            token = self.tokens.get(auth[7:].strip())
            if token is None:
                return "unknown"
            if token["revoked"]:
                return "revoked"
            if time.monotonic() >= token["expires"]:
                return "expired"
        return None

    def v1(self, request, valid, errors, entry):
        auth_error = self.check_token(request)
        if auth_error:
            entry["authError"] = auth_error
            return json_response(401, {"error": "invalid_token", "error_description": auth_error},
                                 {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not valid:
            return json_response(400, {"errors": errors})
        key = (request.headers["Idempotency-Key"], request.method, request.path)
        with self.lock:
            failure = self.take_failure(request)
            if failure is not None:
                entry["injected"] = True
                return failure
            stored = self.idempotency.get(key)
            if stored is not None:
                entry["replay"] = True
                status, headers, body = stored
                response = Response(body, status=status, headers=headers)
                if not any(k.lower() == "content-type" for k, _ in headers):
                    del response.headers["Content-Type"]
                response.headers["Idempotent-Replayed"] = "true"
                return response
            response = self.apply(request)
            if response.status_code < 500:
                headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
                self.idempotency[key] = (response.status_code, headers, response.get_data())
            return response

    def apply(self, request):
        """The operation itself (under the lock, after validation)."""
        parts = request.path.strip("/").split("/")  # v1 vehicles [id [photos]]
        method = request.method
        if parts == ["v1", "vehicles"] and method == "POST":
            body = json.loads(request.get_data())
            if self.vin_taken(body["vin"], None):
                return json_response(409, {"error": "conflict",
                                           "message": f"a vehicle with VIN {body['vin']} exists"})
            vid = f"dms-{self.next_vehicle}"
            self.next_vehicle += 1
            self.vehicles[vid] = dict(self.listing(body), photos=[], deleted=False)
            return json_response(201, {"id": vid}, {"Location": f"/v1/vehicles/{vid}"})
        vid = parts[2]
        vehicle = self.vehicles.get(vid)
        if vehicle is None or vehicle["deleted"]:
            return json_response(404, {"error": "not_found", "message": f"no vehicle {vid}"})
        if len(parts) == 3 and method == "PUT":
            body = json.loads(request.get_data())
            if self.vin_taken(body["vin"], vid):
                return json_response(409, {"error": "conflict",
                                           "message": f"another vehicle has VIN {body['vin']}"})
            vehicle.update(self.listing(body))
            return json_response(200, {"id": vid})
        if len(parts) == 3 and method == "DELETE":
            vehicle["deleted"] = True
            return json_response(204, None)
        if len(parts) == 4 and method == "POST":
            # Parsed by werkzeug (not openapi-core), from the body it read while validating.
            upload = request.files["file"]
            data = upload.read()
            photo_id = f"p-{self.next_photo}"
            self.next_photo += 1
            vehicle["photos"].append({
                "photoId": photo_id,
                "position": int(request.form["position"]),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "contentType": upload.content_type,
                "filename": upload.filename,
            })
            return json_response(201, {"photoId": photo_id})
        raise AssertionError(f"validated but not handled: {method} {request.path}")

    def vin_taken(self, vin, except_id):
        return any(v["vin"] == vin and not v["deleted"] and vid != except_id
                   for vid, v in self.vehicles.items())

    @staticmethod
    def listing(body):
        return {k: body.get(k) for k in ("vin", "make", "model", "year", "stockNumber", "status")}


def watch_parent(stop):
    parent = os.getppid()
    if parent == 1:
        return
    while not stop.wait(0.5):
        if os.getppid() != parent:
            print("server.py: the process that started me exited; stopping", file=sys.stderr,
                  flush=True)
            os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    ap.add_argument("--ready-file", type=Path, help="gets the port once listening")
    ap.add_argument("--client-id", default="vehicle-connect")
    ap.add_argument("--client-secret", default="secret")
    ap.add_argument("--token-ttl", type=int, default=3600, help="seconds")
    args = ap.parse_args()
    if args.token_ttl < 1:
        ap.error("--token-ttl must be at least 1")

    app = Dms(args.client_id, args.client_secret, args.token_ttl)
    # HTTP/1.1, one thread a connection; werkzeug answers every request with
    # `Connection: close` (no keep-alive). Access log lines go to stderr.
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    port = server.server_port
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.rename(args.ready_file)
    print(f"server.py: AutoDMS on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

    stop = threading.Event()
    threading.Thread(target=watch_parent, args=(stop,), daemon=True).start()

    def on_signal(signum, _frame):
        stop.set()
        # shutdown() waits for serve_forever, so not from this (the serving) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
