//! The self-service endpoints in the OpenAPI document: the same five operations for each
//! kind, written out per kind with its spec's schema (the CRD's, less what the API manages)
//! and examples.

use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::credentials::{ClientCertificate, Credentials, OAuth2Client, UserPassword};
use super::kind::Kind;
use super::view::{Health, ResourceView};

/// Adds the self-service paths, schemas and tag to `doc` (the document as JSON).
pub fn complete(doc: &mut Map<String, Value>) {
    let mut schemas = Map::new();
    add::<ResourceView>(&mut schemas);
    add::<Health>(&mut schemas);
    add::<Credentials>(&mut schemas);
    add::<UserPassword>(&mut schemas);
    add::<OAuth2Client>(&mut schemas);
    add::<ClientCertificate>(&mut schemas);
    schemas.insert(
        "SelfServiceList".into(),
        json!({
            "type": "object", "required": ["items"],
            "properties": { "items": { "type": "array", "items": schema_ref("ResourceView") } },
        }),
    );
    let crd_specs = crd_specs();
    let mut paths = Map::new();
    for kind in Kind::ALL {
        let spec_name = format!("SelfService{}Spec", kind.kind_name());
        if let Some(spec) = crd_specs.get(kind.kind_name()) {
            schemas.insert(spec_name.clone(), client_spec_schema(kind, spec.clone()));
        }
        schemas.insert(
            format!("SelfService{}Request", kind.kind_name()),
            request_schema(&spec_name),
        );
        let (collection, item) = path_items(kind);
        let seg = kind.segment();
        paths.insert(format!("/v1/self-service/{seg}"), collection);
        paths.insert(format!("/v1/self-service/{seg}/{{name}}"), item);
    }
    if let Some(Value::Object(p)) = doc.get_mut("paths") {
        p.extend(paths);
    }
    let components = doc
        .entry("components")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(c) = components
        && let Some(Value::Object(s)) = c.get_mut("schemas")
    {
        s.extend(schemas);
    }
    if let Some(Value::Array(tags)) = doc.get_mut("tags") {
        tags.push(json!({
            "name": "self-service",
            "description": "A client manages its own webhook subscriptions, FTP and API connections (manage tokens, `--manage-token-file`). They live in the namespace a cluster admin designated for the client (Namespace annotation `connect.vehicles.io/self-service-client`); credentials go to a Secret there and are never returned.",
        }));
    }
}

fn add<T: ToSchema>(schemas: &mut Map<String, Value>) {
    if let Ok(v) = serde_json::to_value(T::schema()) {
        schemas.insert(T::name().into_owned(), v);
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Each CRD's `spec` schema, by kind.
fn crd_specs() -> Map<String, Value> {
    let mut out = Map::new();
    for (_, yaml) in crate::api::crd_files().unwrap_or_default() {
        let Ok(crd) = serde_yaml::from_str::<Value>(&yaml) else {
            continue;
        };
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        if let Some(kind) = crd["spec"]["names"]["kind"].as_str() {
            out.insert(kind.to_string(), spec.clone());
        }
    }
    out
}

/// The CRD's spec schema as a client sends it: `clientId` optional (it is forced), and
/// without the Secret references the API sets from `credentials`.
fn client_spec_schema(kind: Kind, mut spec: Value) -> Value {
    drop_prop(&mut spec, &[], "clientId", false);
    let managed: &[(&[&str], &str)] = match kind {
        Kind::Webhook => &[(&[], "auth"), (&[], "signing"), (&[], "tls")],
        Kind::Ftp => &[
            (&[], "credentialsSecretRef"),
            (&[], "caSecretRef"),
            (&["ssh"], "knownHostsSecretRef"),
            (&["ssh"], "knownHostsConfigMapRef"),
        ],
        Kind::Api => &[
            (&[], "tls"),
            (&[], "openapi"),
            (&["auth"], "basic"),
            (&["auth"], "bearer"),
            (&["auth", "apiKey"], "secretRef"),
            (&["auth", "oauth2"], "clientSecretRef"),
        ],
    };
    for (path, prop) in managed {
        drop_prop(&mut spec, path, prop, true);
    }
    if let Some(m) = spec.as_object_mut() {
        m.insert(
            "description".into(),
            Value::String(format!(
                "The {}'s spec as in its CRD (camelCase). `clientId` may be left out: it is always the client the request is for. Secret references are not sent: the API sets them from `credentials`.",
                kind.kind_name()
            )),
        );
    }
    spec
}

/// Removes `prop` from the object schema at `path` (of `properties`): from its `required`,
/// and from its `properties` too when `remove`.
fn drop_prop(schema: &mut Value, path: &[&str], prop: &str, remove: bool) {
    let mut at = schema;
    for p in path {
        at = &mut at["properties"][*p];
    }
    if let Some(Value::Array(req)) = at.get_mut("required") {
        req.retain(|r| r != prop);
    }
    if remove && let Some(Value::Object(props)) = at.get_mut("properties") {
        props.remove(prop);
    }
}

fn request_schema(spec_name: &str) -> Value {
    json!({
        "type": "object",
        "required": ["spec"],
        "additionalProperties": false,
        "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      "description": "The resource's name, a DNS-1123 label; required on POST (on PUT it is the path's)." },
            "spec": schema_ref(spec_name),
            "credentials": schema_ref("Credentials"),
            "resourceVersion": { "type": "string",
                                 "description": "PUT only: the resourceVersion read; a change made since then is refused with 409." },
            "generation": { "type": "integer",
                            "description": "PUT only: the generation read; a spec change made since then is refused with 409 (status writes do not count, unlike resourceVersion)." },
        },
    })
}

/// A POST body per kind.
fn example(kind: Kind) -> Value {
    match kind {
        Kind::Webhook => json!({
            "name": "crm",
            "spec": { "url": "https://crm.dealer-1.example/hooks/vc",
                      "events": ["vehicle.processed", "vehicle.deleted"], "timeoutSeconds": 10 },
            "credentials": { "basic": { "username": "vc", "password": "s3cret" },
                             "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" },
        }),
        Kind::Ftp => json!({
            "name": "photos-anna",
            "spec": { "host": "ftp.dealer-1.example", "protocol": "ftps", "userIds": ["u-42"],
                      "rules": { "baseDirectory": "incoming", "fileName": "{vin}_{index:02}.{ext}" } },
            "credentials": { "username": "anna", "password": "an0ther" },
        }),
        Kind::Api => json!({
            "name": "dms",
            "spec": { "baseUrl": "https://dms.dealer-1.example/api", "events": ["vehicle.processed"],
                      "auth": { "apiKey": { "header": "X-Api-Key" } },
                      "mappings": [{ "events": ["vehicle.processed"],
                                     "requests": [{ "name": "photos", "method": "POST",
                                                    "path": "/vehicles/{{ vehicle.id }}/photos",
                                                    "body": "{\"count\": {{ images | length }}}" }] }] },
            "credentials": { "apiKey": "k-7f3a9c" },
        }),
    }
}

fn error(description: &str, example: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": {
            "schema": schema_ref("ErrorBody"),
            "example": example,
        } },
    })
}

fn errors(with_body: bool) -> Map<String, Value> {
    let mut out = Map::new();
    if with_body {
        out.insert("400".into(), error(
            "A bad body, name, credential or `client`; `field` names it",
            json!({ "error": "invalid_request", "message": "spec.clientId must be \"dealer-1\", the client this request is for (or left out)", "field": "spec.clientId" }),
        ));
    }
    out.insert("401".into(), error(
        "No or an unknown manage token",
        json!({ "error": "unauthorized", "message": "a manage token is required: Authorization: Bearer <token>" }),
    ));
    out.insert("403".into(), error(
        "`client` is not the token's (`forbidden_client`); the client has no self-service namespace (`self_service_disabled`); on writes, the namespace does not allow the client (`client_not_allowed`)",
        json!({ "error": "self_service_disabled", "message": "client \"dealer-1\" has no self-service namespace: a cluster admin designates one by annotating a Namespace connect.vehicles.io/self-service-client: dealer-1" }),
    ));
    out.insert("500".into(), error(
        "Two namespaces are designated for the client (`misconfigured`)",
        json!({ "error": "misconfigured", "message": "client \"dealer-1\" has 2 self-service namespaces (a, b); exactly one Namespace may carry connect.vehicles.io/self-service-client: dealer-1, ask the cluster admin to remove the others" }),
    ));
    out.insert("503".into(), error(
        "The Kubernetes API server could not be reached, or the operator may not write there",
        json!({ "error": "unavailable", "message": "the Kubernetes API server answered 500: etcdserver: request timed out" }),
    ));
    out
}

fn not_found(kind: Kind) -> Value {
    error(
        "No such resource of the client's (another client's, or one not created by self-service, is not found either)",
        json!({ "error": "not_found", "message": format!("{}/crm not found", kind.segment()) }),
    )
}

fn with(mut base: Map<String, Value>, extra: &[(&str, Value)]) -> Value {
    for (k, v) in extra {
        base.insert((*k).to_string(), v.clone());
    }
    Value::Object(base)
}

fn operation(
    kind: Kind,
    op_id: &str,
    summary: &str,
    params: Value,
    body: Option<Value>,
    responses: Value,
) -> Value {
    let mut op = json!({
        "tags": ["self-service"],
        "summary": summary,
        "operationId": format!("{op_id}{}", kind.kind_name()),
        "parameters": params,
        "responses": responses,
        "security": [{ "bearer": [] }],
    });
    if let Some(b) = body {
        op["requestBody"] = json!({ "required": true, "content": { "application/json": b } });
    }
    op
}

/// The collection's and one item's path items of `kind`.
fn path_items(kind: Kind) -> (Value, Value) {
    let client = json!({
        "name": "client", "in": "query", "required": false,
        "description": "The client whose resources these are: required when the token acts for several clients (or any, `*`); may be left out by a token of one client.",
        "schema": { "type": "string" }, "example": "dealer-1",
    });
    let name = json!({
        "name": "name", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63 },
        "example": "crm",
    });
    let request = format!("SelfService{}Request", kind.kind_name());
    let view = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": schema_ref("ResourceView") } },
        })
    };
    let unprocessable = error(
        "The API server refused the resource (the CRD's schema or CEL rules); `field` names the field",
        json!({ "error": "invalid_resource", "message": "spec.timeoutSeconds: Invalid value: 500: spec.timeoutSeconds in body should be less than or equal to 120", "field": "spec.timeoutSeconds" }),
    );
    let label = kind.kind_name();
    let collection = json!({
        "get": operation(kind, "list", &format!("The client's self-service {label}s"),
            json!([client.clone()]), None,
            with(errors(false), &[("200", json!({
                "description": "The client's resources of this kind, by name",
                "content": { "application/json": { "schema": schema_ref("SelfServiceList") } },
            }))])),
        "post": operation(kind, "create", &format!("Create a {label} (and its credentials Secret)"),
            json!([client.clone()]),
            Some(json!({ "schema": schema_ref(&request), "example": example(kind) })),
            with(errors(true), &[
                ("201", view("Created; `status` fills in once the operator has looked at it")),
                ("409", error("A resource of that name exists in the namespace", json!({ "error": "conflict", "message": format!("{}/crm exists already", kind.segment()) }))),
                ("422", unprocessable.clone()),
            ])),
    });
    let mut put_example = example(kind);
    if let Some(m) = put_example.as_object_mut() {
        m.remove("name");
        m.remove("credentials");
    }
    let item = json!({
        "get": operation(kind, "get", &format!("One self-service {label}, with its health"),
            json!([name.clone(), client.clone()]), None,
            with(errors(false), &[("200", view("The resource")), ("404", not_found(kind))])),
        "put": operation(kind, "replace", &format!("Replace a {label}'s spec; credentials left out are kept, `null` removes one"),
            json!([name.clone(), client.clone()]),
            Some(json!({ "schema": schema_ref(&request), "example": put_example })),
            with(errors(true), &[
                ("200", view("Replaced")),
                ("404", not_found(kind)),
                ("409", error("Changed since `resourceVersion`", json!({ "error": "conflict", "message": format!("{}/crm was changed meanwhile (resourceVersion); read it again and retry", kind.segment()) }))),
                ("422", unprocessable),
            ])),
        "delete": operation(kind, "delete", &format!("Delete a {label} and its credentials Secret"),
            json!([name, client]), None,
            with(errors(false), &[("204", json!({ "description": "Deleted" })), ("404", not_found(kind))])),
    });
    (collection, item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_specs_lack_what_the_api_manages() {
        let specs = crd_specs();
        let ftp = client_spec_schema(Kind::Ftp, specs["FtpConnection"].clone());
        assert!(ftp["properties"].get("credentialsSecretRef").is_none());
        assert!(ftp["properties"]["clientId"].is_object());
        let req: Vec<&str> = ftp["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            !req.contains(&"clientId") && req.contains(&"host"),
            "{req:?}"
        );
        let api = client_spec_schema(Kind::Api, specs["ApiConnection"].clone());
        let key = &api["properties"]["auth"]["properties"]["apiKey"];
        assert!(key["properties"].get("secretRef").is_none());
        assert!(key["properties"]["header"].is_object());
    }
}
