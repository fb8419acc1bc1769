#!/usr/bin/env python3
"""Checks requests against vehicle-connect's OpenAPI document with validators independent of
its Rust code: openapi-core (the whole request: body, headers, security) and, for the body
alone, jsonschema on the same component schemas. Run with the venv of scripts/dms-venv.sh:

    "$(scripts/dms-venv.sh)" tests/peers/openapi/check.py docs/openapi.json < cases.json

stdin is a JSON array of cases, each
    {"name": "...", "kind": "ingest", "body": "<request body as text>"}
        a POST /v1/events request with a bearer token;
    {"name": "...", "kind": "webhook", "webhook": "vehicle.processed",
     "headers": {"name": "value", ...}, "body": "<request body as text>"}
        a request of that entry of `webhooks`.
stdout is a JSON array, in the same order, of {"name", "valid", "errors": [...]}. A case is
valid only if both validators accept it; when they disagree that is an error of its own
(reported in "errors" and as "valid": false), so neither can silently pass what the other
refuses. The document itself is first checked against the OpenAPI 3.1 specification, and
its examples against their schemas; an invalid document or example, or anything unexpected,
exits non-zero with the reason on stderr.
"""

import json
import sys

import jsonschema
import referencing
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.request.exceptions import RequestBodyValidationError
from openapi_spec_validator import validate as validate_spec
from werkzeug.datastructures import Headers, ImmutableMultiDict

BASE = "urn:vehicle-connect:openapi"


class WebhookRequest:
    """openapi-core's WebhookRequest protocol: the entry's name, the method, the parts."""

    def __init__(self, name, headers, body):
        self.name = name
        self.method = "post"
        self.body = body
        self.content_type = headers.get("content-type", "")
        self.parameters = RequestParameters(
            path={},
            query=ImmutableMultiDict(),
            header=Headers(headers),
            cookie=ImmutableMultiDict(),
        )


class IngestRequest:
    """openapi-core's Request protocol for POST /v1/events."""

    host_url = "http://127.0.0.1"
    path = "/v1/events"
    method = "post"
    content_type = "application/json"

    def __init__(self, body):
        self.body = body
        self.parameters = RequestParameters(
            path={},
            query=ImmutableMultiDict(),
            header=Headers(
                {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
            ),
            cookie=ImmutableMultiDict(),
        )


def short(text, limit=300):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def causes(e):
    """The messages of an openapi-core error and of what caused it, schema errors included."""
    out = []
    while e is not None:
        out.append(f"{type(e).__name__}: {short(e)}")
        for se in getattr(e, "schema_errors", None) or []:
            out.append(f"  at {list(se.absolute_path)}: {short(se.message)}")
        e = e.__cause__
    return out


def example_errors(doc, validator):
    """Every example of the document (of schemas and their properties, of request and
    response bodies) against its schema."""

    def check(where, pointer, example):
        for e in validator(pointer).iter_errors(example):
            yield f"{where}, at {list(e.absolute_path)}: {short(e.message)}"

    for name, schema in doc["components"]["schemas"].items():
        pointer = f"/components/schemas/{name}"
        if "example" in schema:
            yield from check(name, pointer, schema["example"])
        for prop, sub in schema.get("properties", {}).items():
            if "example" in sub:
                yield from check(f"{name}.{prop}", f"{pointer}/properties/{prop}", sub["example"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            bodies = [("request", op.get("requestBody", {}))]
            bodies += [(status, r) for status, r in op.get("responses", {}).items()]
            for what, body in bodies:
                for media in body.get("content", {}).values():
                    ref = media.get("schema", {}).get("$ref")
                    if not ref:
                        continue
                    examples = [media["example"]] if "example" in media else []
                    examples += [e["value"] for e in media.get("examples", {}).values()]
                    for example in examples:
                        yield from check(f"{method} {path} {what}", ref[1:], example)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check.py OPENAPI.json < cases.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        doc = json.load(f)
    validate_spec(doc)
    api = OpenAPI.from_dict(doc)

    registry = referencing.Registry().with_resource(
        BASE, referencing.Resource.from_contents(doc, referencing.jsonschema.DRAFT202012)
    )

    def validator(pointer):
        return jsonschema.Draft202012Validator(
            {"$ref": f"{BASE}#{pointer}"},
            registry=registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )

    mapping = doc["components"]["schemas"]["EventInput"]["discriminator"]["mapping"]

    def body_errors(pointer, body):
        errors = [
            f"jsonschema at {list(e.absolute_path)}: {short(e.message)}"
            for e in validator(pointer).iter_errors(body)
        ]
        if errors and pointer.endswith("/EventsInput"):
            # "valid under none of the given schemas" says little: the errors against the
            # schema of each event's own type say what is wrong.
            items = body if isinstance(body, list) else [body]
            for i, item in enumerate(items):
                ref = mapping.get(item.get("type")) if isinstance(item, dict) else None
                if ref:
                    errors += [
                        f"  event {i} as {item['type']}, at {list(e.absolute_path)}: {short(e.message)}"
                        for e in validator(ref[1:]).iter_errors(item)
                    ]
        return errors

    bad = list(example_errors(doc, validator))
    if bad:
        sys.exit("examples of the document do not match their schemas:\n" + "\n".join(bad))

    results = []
    for case in json.load(sys.stdin):
        raw = case["body"].encode("utf-8")
        try:
            parsed = json.loads(raw)
        except ValueError as e:
            results.append({"name": case["name"], "valid": False, "errors": [f"not JSON: {e}"]})
            continue
        if case["kind"] == "ingest":
            core = list(api.iter_request_errors(IngestRequest(raw)))
            pointer = "/components/schemas/EventsInput"
        elif case["kind"] == "webhook":
            op = doc["webhooks"][case["webhook"]]["post"]
            headers = {k.lower(): v for k, v in case["headers"].items()}
            request = WebhookRequest(case["webhook"], headers, raw)
            core = list(api.iter_webhook_request_errors(request))
            pointer = op["requestBody"]["content"]["application/json"]["schema"]["$ref"][1:]
        else:
            sys.exit(f"unknown kind {case['kind']!r}")
        plain = body_errors(pointer, parsed)
        # openapi-core also checks headers and security; on the body the two must agree.
        core_body = any(isinstance(e, RequestBodyValidationError) for e in core)
        errors = [c for e in core for c in causes(e)] + plain
        if core_body != bool(plain):
            errors.append(
                "the validators disagree about the body: "
                f"openapi-core {'refused' if core_body else 'accepted'} it, "
                f"jsonschema {'refused' if plain else 'accepted'} it"
            )
        results.append({"name": case["name"], "valid": not errors, "errors": errors})
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
