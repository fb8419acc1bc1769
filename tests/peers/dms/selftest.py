#!/usr/bin/env python3
"""Self-test of the AutoDMS peer: starts server.py (with the venv of scripts/dms-venv.sh) and
drives it over raw HTTP with the standard library only, bodies built by hand.

    python3 tests/peers/dms/selftest.py [--python VENV_PYTHON]

Prints one line per check and `N passed, N failed`; exits non-zero on a failure.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CLIENT_ID, CLIENT_SECRET = "dealer-42", "s3cret+/=:x"
VIN1, VIN2, VIN3 = "1HGCM82633A004352", "WVWZZZ1JZXW000001", "JH4KA7561PC008269"

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name} {detail}")


class Server:
    def __init__(self, python, *extra):
        self.dir = tempfile.TemporaryDirectory(prefix="dms-selftest-")
        ready = Path(self.dir.name) / "port"
        self.stderr = open(Path(self.dir.name) / "stderr", "w+")
        self.proc = subprocess.Popen(
            [python, str(HERE / "server.py"), "--port", "0", "--ready-file", str(ready),
             "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"server.py did not start: {self.log()}")
            time.sleep(0.05)
        self.port = int(ready.read_text())

    def log(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, method, path, body=None, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if chunked:
            conn.putrequest(method, path)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 1000):
                piece = body[i:i + 1000]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed

    def admin(self, method, path, body=None):
        raw = json.dumps(body).encode() if body is not None else None
        status, _, parsed = self.call(method, "/_admin/" + path, raw,
                                      {"Content-Type": "application/json"} if raw else {})
        assert status == 200, (path, status, parsed)
        return parsed

    def token(self):
        status, _, body = self.call(
            "POST", "/oauth/token", b"grant_type=client_credentials&scope=vehicles%3Awrite",
            {"Content-Type": "application/x-www-form-urlencoded", "Authorization": basic()})
        assert status == 200, (status, body)
        return body["access_token"]


def basic(user=CLIENT_ID, password=CLIENT_SECRET):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def api(token, key, extra=None):
    h = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    h.update(extra or {})
    return h


def jbody(**fields):
    return json.dumps(fields).encode()


def vehicle(vin=VIN1, **over):
    v = {"vin": vin, "make": "Volkswagen", "model": "Golf", "year": 2021,
         "stockNumber": "S-1001", "status": "draft"}
    v.update(over)
    return {k: x for k, x in v.items() if x is not None}


JSON = {"Content-Type": "application/json"}


def multipart(parts, boundary="vc-boundary-0123456789abcdef"):
    """parts: (name, data, filename or None, content type or None)."""
    out = b""
    for name, data, filename, ctype in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"'
        out += disp.encode() + b"\r\n"
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def fields(errors):
    return {e.get("field") for e in errors}


def lifecycle(srv):
    # --- token endpoint
    s, h, b = srv.call("POST", "/oauth/token", b"grant_type=client_credentials",
                       {"Content-Type": "application/x-www-form-urlencoded",
                        "Authorization": basic()})
    check("token: Basic credentials -> 200 Bearer",
          s == 200 and b["token_type"] == "Bearer" and b["expires_in"] == 3600
          and h.get("cache-control") == "no-store", (s, b))
    s, _, b = srv.call(
        "POST", "/oauth/token",
        f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret=s3cret%2B%2F%3D%3Ax"
        .encode(), {"Content-Type": "application/x-www-form-urlencoded"})
    check("token: form credentials -> 200", s == 200 and b["access_token"], (s, b))
    s, h, b = srv.call("POST", "/oauth/token", b"grant_type=client_credentials",
                       {"Content-Type": "application/x-www-form-urlencoded",
                        "Authorization": basic(password="wrong")})
    check("token: wrong secret -> 401 invalid_client",
          s == 401 and b == {"error": "invalid_client"}, (s, b))
    s, _, b = srv.call("POST", "/oauth/token", b"grant_type=client_credentials",
                       {"Content-Type": "application/x-www-form-urlencoded"})
    check("token: no credentials -> 401", s == 401, (s, b))
    s, _, b = srv.call("POST", "/oauth/token", b"grant_type=password",
                       {"Content-Type": "application/x-www-form-urlencoded",
                        "Authorization": basic()})
    check("token: grant_type=password -> 400 naming grant_type",
          s == 400 and "grant_type" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/oauth/token", b'{"grant_type":"client_credentials"}',
                       dict(JSON, Authorization=basic()))
    check("token: JSON body -> 400 (not the documented media type)", s == 400, (s, b))
    tok = srv.token()

    # --- create
    s, h, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle()), dict(api(tok, "c-1"), **JSON))
    check("create -> 201 dms-1 with Location",
          s == 201 and b == {"id": "dms-1"} and h.get("location") == "/v1/vehicles/dms-1", (s, h, b))
    vid = b["id"]
    s, h, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle()), dict(api(tok, "c-1"), **JSON))
    check("create replay (same key) -> same 201, not applied again",
          s == 201 and b == {"id": "dms-1"} and h.get("idempotent-replayed") == "true", (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle()), dict(api(tok, "c-2"), **JSON))
    check("create same VIN, new key -> 409", s == 409, (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2, color="red")),
                       dict(api(tok, "c-3"), **JSON))
    check("create with unknown property -> 400 naming it",
          s == 400 and "color" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle("IOQ12345678901234")),
                       dict(api(tok, "c-4"), **JSON))
    check("create with VIN I/O/Q -> 400 naming vin", s == 400 and "vin" in fields(b["errors"]),
          (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2, year="2021")),
                       dict(api(tok, "c-5"), **JSON))
    check("create with year as string -> 400 naming year",
          s == 400 and "year" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2, year=1850)),
                       dict(api(tok, "c-5b"), **JSON))
    check("create with year 1850 -> 400 naming year",
          s == 400 and "year" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2, status=None)),
                       dict(api(tok, "c-6"), **JSON))
    check("create without status -> 400 naming status",
          s == 400 and "status" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2, status="sold")),
                       dict(api(tok, "c-7"), **JSON))
    check("create with status sold -> 400", s == 400 and "status" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2)), api(tok, "c-8", {
        "Content-Type": "text/plain"}))
    check("create as text/plain -> 400", s == 400, (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", b"{not json", dict(api(tok, "c-9"), **JSON))
    check("create with broken JSON -> 400", s == 400, (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2)),
                       {"Authorization": f"Bearer {tok}", **JSON})
    check("create without Idempotency-Key -> 400 naming it",
          s == 400 and "Idempotency-Key" in fields(b["errors"]), (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2)),
                       dict(api(tok, "k" * 256), **JSON))
    check("create with a 256-char Idempotency-Key -> 400", s == 400, (s, b))
    s, h, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2)), dict(JSON, **{
        "Idempotency-Key": "c-10"}))
    check("create without token -> 401 invalid_token",
          s == 401 and h.get("www-authenticate") == 'Bearer error="invalid_token"', (s, h, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(VIN2)),
                       dict(api("made-up", "c-11"), **JSON))
    check("create with unknown token -> 401", s == 401, (s, b))

    # --- update
    s, _, b = srv.call("PUT", f"/v1/vehicles/{vid}", jbody(**vehicle(status="ready", year=2022)),
                       dict(api(tok, "u-1"), **JSON))
    check("update -> 200", s == 200 and b == {"id": vid}, (s, b))
    s, _, b = srv.call("PUT", f"/v1/vehicles/{vid}", jbody(**vehicle(status="ready", make=None)),
                       dict(api(tok, "u-2"), **JSON))
    check("update without make -> 400 naming make", s == 400 and "make" in fields(b["errors"]),
          (s, b))
    s, _, b = srv.call("PUT", "/v1/vehicles/dms-999", jbody(**vehicle(VIN3)),
                       dict(api(tok, "u-3"), **JSON))
    check("update unknown id -> 404", s == 404, (s, b))

    # --- photos
    jpeg = b"\xff\xd8\xff\xe0" + os.urandom(200_000) + b"\r\n--vc-boundary\r\n\xff\xd9"
    body, h = multipart([("file", jpeg, "front.jpg", "image/jpeg"), ("position", b"1", None, None)])
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-1", h))
    check("photo upload -> 201 p-1", s == 201 and b == {"photoId": "p-1"}, (s, b))
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(50_000)
    body, h = multipart([("position", b"2", None, None), ("file", png, "rear.png", "image/png")],
                        boundary="----WebKitFormBoundary7MA4YWxkTrZu0gW")
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-2", h),
                       chunked=True)
    check("photo upload, chunked, position first -> 201", s == 201, (s, b))
    body, h = multipart([("file", jpeg, "x.jpg", "image/jpeg")])
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-3", h))
    check("photo without position -> 400 naming position",
          s == 400 and "position" in fields(b["errors"]), (s, b))
    body, h = multipart([("file", jpeg, "x.jpg", "image/jpeg"), ("position", b"0", None, None)])
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-4", h))
    check("photo with position 0 -> 400 naming position",
          s == 400 and "position" in fields(b["errors"]), (s, b))
    body, h = multipart([("file", jpeg, "x.jpg", "image/jpeg"), ("position", b"two", None, None)])
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-5", h))
    check("photo with position 'two' -> 400", s == 400, (s, b))
    body, h = multipart([("position", b"3", None, None)])
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-6", h))
    check("photo without file -> 400 naming file", s == 400 and "file" in fields(b["errors"]),
          (s, b))
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", jbody(file="x", position=1),
                       dict(api(tok, "p-7"), **JSON))
    check("photo as JSON -> 400", s == 400, (s, b))
    body, h = multipart([("file", b"abc", "x.jpg", "image/jpeg"), ("position", b"1", None, None)])
    s, _, b = srv.call("POST", "/v1/vehicles/dms-999/photos", body, api(tok, "p-8", h))
    check("photo on unknown vehicle -> 404", s == 404, (s, b))
    body, h = multipart([("file", jpeg, "x.jpg", "image/jpeg"), ("position", b"1", None, None)],
                        boundary="a=b")
    h = {"Content-Type": 'multipart/form-data; boundary="a=b"'}
    s, _, b = srv.call("POST", f"/v1/vehicles/{vid}/photos", body, api(tok, "p-9", h))
    check("photo with '=' in the boundary -> 400 (openapi-core cannot parse it; documented)",
          s == 400 and "openapi-core could not check" in b["errors"][0]["message"], (s, b))

    st = srv.admin("GET", "state")
    photos = st["vehicles"][vid]["photos"]
    check("state: photos recorded with size, sha256, content type, filename",
          photos == [
              {"photoId": "p-1", "position": 1, "size": len(jpeg),
               "sha256": hashlib.sha256(jpeg).hexdigest(), "contentType": "image/jpeg",
               "filename": "front.jpg"},
              {"photoId": "p-2", "position": 2, "size": len(png),
               "sha256": hashlib.sha256(png).hexdigest(), "contentType": "image/png",
               "filename": "rear.png"}], photos)
    v = st["vehicles"][vid]
    check("state: vehicle as updated",
          (v["vin"], v["status"], v["year"], v["make"], v["deleted"]) ==
          (VIN1, "ready", 2022, "Volkswagen", False), v)

    # --- injected failure
    srv.admin("POST", "fail", {"method": "PUT", "pathPrefix": "/v1/vehicles/", "status": 500,
                               "times": 1})
    s, _, b = srv.call("PUT", f"/v1/vehicles/{vid}", jbody(**vehicle(model="Polo")),
                       dict(api(tok, "u-10"), **JSON))
    check("injected 500 on PUT", s == 500 and b["error"] == "injected", (s, b))
    check("injected failure not applied", srv.admin("GET", "state")["vehicles"][vid]["model"]
          == "Golf")
    s, h, b = srv.call("PUT", f"/v1/vehicles/{vid}", jbody(**vehicle(model="Polo")),
                       dict(api(tok, "u-10"), **JSON))
    check("retry with the same key after the 500 -> applied (500 not stored)",
          s == 200 and "idempotent-replayed" not in h
          and srv.admin("GET", "state")["vehicles"][vid]["model"] == "Polo", (s, h, b))
    srv.admin("POST", "fail", {"pathPrefix": "/v1/", "status": 503, "times": 2, "retryAfter": 3})
    s1, h1, _ = srv.call("DELETE", f"/v1/vehicles/{vid}", None, api(tok, "d-1"))
    s2, _, _ = srv.call("DELETE", f"/v1/vehicles/{vid}", None, api(tok, "d-1"))
    check("injected 503 x2 with Retry-After", (s1, s2, h1.get("retry-after")) == (503, 503, "3"))

    # --- delete
    s, h, b = srv.call("DELETE", f"/v1/vehicles/{vid}", None, api(tok, "d-1"))
    check("delete -> 204, no body", s == 204 and b is None and "content-type" not in h, (s, h, b))
    s, h, b = srv.call("DELETE", f"/v1/vehicles/{vid}", None, api(tok, "d-1"))
    check("delete replay -> 204 replayed", s == 204 and h.get("idempotent-replayed") == "true",
          (s, h))
    s, _, b = srv.call("DELETE", f"/v1/vehicles/{vid}", None, api(tok, "d-2"))
    check("delete again, new key -> 404", s == 404, (s, b))
    s, _, b = srv.call("PUT", f"/v1/vehicles/{vid}", jbody(**vehicle()), dict(api(tok, "u-11"),
                                                                             **JSON))
    check("update deleted -> 404", s == 404, (s, b))
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle()), dict(api(tok, "c-20"), **JSON))
    check("create again with the deleted VIN -> 201 dms-2", s == 201 and b["id"] == "dms-2",
          (s, b))

    # --- not in the document
    s, _, b = srv.call("GET", f"/v1/vehicles/{vid}", None, api(tok, "g-1"))
    check("GET (no such operation) -> 405", s == 405, (s, b))
    s, _, b = srv.call("POST", "/v2/vehicles", jbody(**vehicle()), dict(api(tok, "g-2"), **JSON))
    check("unknown path -> 404", s == 404, (s, b))

    # --- tokens expire
    srv.admin("POST", "expire-tokens")
    s, h, b = srv.call("DELETE", "/v1/vehicles/dms-2", None, api(tok, "d-3"))
    check("after expire-tokens -> 401 invalid_token",
          s == 401 and h.get("www-authenticate") == 'Bearer error="invalid_token"', (s, h, b))
    tok = srv.token()
    s, _, _ = srv.call("DELETE", "/v1/vehicles/dms-2", None, api(tok, "d-3"))
    check("new token works", s == 204, s)

    # --- concurrency
    results = []

    def worker(i):
        vin = f"1FTFW1ET{i:09d}"
        s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle(vin)),
                           dict(api(tok, f"conc-{i}"), **JSON))
        s2, h2, b2 = srv.call("POST", "/v1/vehicles", jbody(**vehicle(vin)),
                              dict(api(tok, f"conc-{i}"), **JSON))
        results.append((s, b, s2, b2, h2.get("idempotent-replayed")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {r[1]["id"] for r in results if r[0] == 201}
    check("16 concurrent creates + replays: 16 distinct ids, replays identical",
          len(ids) == 16 and all(r[0] == r[2] == 201 and r[1] == r[3] and r[4] == "true"
                                 for r in results), results)

    # --- the log
    st = srv.admin("GET", "state")
    log = st["requests"]
    check("log: every request recorded, in order", len(log) > 60 and log[0]["path"] == "/oauth/token")
    check("log: tokensIssued", st["tokensIssued"] == 4, st["tokensIssued"])
    bad = [e for e in log if e["responseErrors"]]
    check("log: every answer matches the document (response validation)", not bad, bad[:3])
    replays = [e for e in log if e["replay"]]
    check("log: replays counted", len(replays) == 1 + 16 + 1, len(replays))
    inval = [e for e in log if not e["valid"]]
    check("log: invalid requests recorded with errors",
          all(e["errors"] for e in inval) and any(e["path"].endswith("/photos") for e in inval))
    noauth = [e for e in log if e["status"] == 401 and e["path"].startswith("/v1")]
    check("log: 401s carry why", {e["authError"] for e in noauth} >= {"missing", "unknown",
                                                                       "revoked"}, noauth)

    srv.admin("POST", "reset")
    st = srv.admin("GET", "state")
    check("reset", st == {"vehicles": {}, "requests": [], "tokensIssued": 0}, st)
    s, _, b = srv.call("POST", "/v1/vehicles", jbody(**vehicle()), dict(api(tok, "c-1"), **JSON))
    check("after reset: token still valid, key forgotten, ids restart", s == 201 and
          b["id"] == "dms-1", (s, b))


def ttl(python):
    srv = Server(python, "--token-ttl", "1")
    try:
        tok = srv.token()
        s, _, _ = srv.call("DELETE", "/v1/vehicles/dms-1", None, api(tok, "x"))
        check("ttl 1s: token works at first (404 for unknown id)", s == 404, s)
        time.sleep(1.2)
        s, _, _ = srv.call("DELETE", "/v1/vehicles/dms-1", None, api(tok, "y"))
        log = srv.admin("GET", "state")["requests"]
        check("ttl 1s: expired after 1.2s -> 401", s == 401 and log[-1]["authError"] == "expired",
              (s, log[-1]))
    finally:
        srv.stop()


def parent_death(python):
    """The server stops by itself when the process that started it dies (SIGKILL)."""
    with tempfile.TemporaryDirectory() as d:
        ready = Path(d) / "port"
        code = (f"import subprocess,sys,time; p=subprocess.Popen([{python!r}, {str(HERE / 'server.py')!r},"
                f" '--ready-file', {str(ready)!r}], stderr=subprocess.DEVNULL);"
                " print(p.pid, flush=True); time.sleep(60)")
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        gone = False
        for _ in range(60):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                gone = True
                break
            # It is our grandchild, reparented: reap it if it became ours (subreaper) or not.
            try:
                os.waitpid(child, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        check("server stops when its parent dies", gone)
        if not gone:
            os.kill(child, 9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", help="the venv's python (default: scripts/dms-venv.sh)")
    args = ap.parse_args()
    python = args.python or subprocess.run(
        [str(ROOT / "scripts/dms-venv.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip().splitlines()[-1]
    srv = Server(python)
    try:
        lifecycle(srv)
    finally:
        srv.stop()
        errors = [line for line in srv.log().splitlines() if "Traceback" in line
                  or "not as documented" in line]
        check("server stderr: no tracebacks, no undocumented responses", not errors, errors)
    ttl(python)
    parent_death(python)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
