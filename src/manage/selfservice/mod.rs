//! Self-service: a client manages its own WebhookSubscriptions, FtpConnections and
//! ApiConnections with its manage token, without kubectl.
//!
//! The resources go into the one namespace a cluster admin designated for the client
//! ([`namespace`]), labelled as the client's self-service objects ([`labels`]); credentials
//! go into a Secret beside each (owned by it) and never come back out. This API only ever
//! touches objects carrying those labels for the caller's client: anything else, even in
//! the same namespace, is "not found". The API server validates what is written (the CRDs'
//! schemas and CEL rules) and its refusals come back naming the field.

mod credentials;
mod kind;
mod kube_errors;
mod labels;
mod namespace;
pub mod openapi;
mod view;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub use labels::{CLIENT_LABEL, NAMESPACE_ANNOTATION, SELF_SERVICE_LABEL};

use super::{ApiError, Caller, ManageState};
use credentials::{Change, CredentialSet};
use kind::Kind;
use kube_errors::from_kube;
use namespace::Home;
use view::ResourceView;

/// Field manager of what this API writes.
const FIELD_MANAGER: &str = "vehicle-connect-self-service";

/// Labels this operator's own selectors need on what self-service writes.
#[derive(Clone, Debug, Default)]
pub struct SelfServiceSettings {
    /// Added to every resource created, so this operator serves it under
    /// `--watch-label-selector` (see [`labels::required_by`]).
    pub resource_labels: BTreeMap<String, String>,
    /// Added to every credentials Secret, so this operator may read it under
    /// `--secret-selector`.
    pub secret_labels: BTreeMap<String, String>,
}

impl SelfServiceSettings {
    /// The labels the operator's `--watch-label-selector` and `--secret-selector` need.
    pub fn for_selectors(watch: Option<&str>, secrets: Option<&str>) -> Self {
        SelfServiceSettings {
            resource_labels: watch.map(labels::required_by).unwrap_or_default(),
            secret_labels: secrets.map(labels::required_by).unwrap_or_default(),
        }
    }
}

pub fn routes() -> Router<ManageState> {
    Router::new()
        .route("/v1/self-service/{kind}", get(list).post(create))
        .route(
            "/v1/self-service/{kind}/{name}",
            get(read).put(update).delete(remove),
        )
}

/// `?client=`: which of the token's clients (required for a token of several, or `*`).
#[derive(Debug, Default, Deserialize)]
pub struct ClientQuery {
    pub client: Option<String>,
}

/// A request's body on `POST` and `PUT`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    name: Option<String>,
    spec: Value,
    credentials: Option<Value>,
    resource_version: Option<String>,
    /// PUT only: the `generation` read. Unlike `resourceVersion`, it moves only when the spec
    /// changes (the operator's status writes move `resourceVersion` too), so an edit is
    /// refused only when someone else changed the spec meanwhile.
    generation: Option<i64>,
}

/// Who asks for which client's resources of which kind, and where they are.
struct Ctx {
    kind: Kind,
    client_id: String,
    home: Home,
    kube: kube::Client,
    settings: SelfServiceSettings,
}

impl Ctx {
    async fn new(
        st: &ManageState,
        headers: &HeaderMap,
        segment: &str,
        query: Result<Query<ClientQuery>, QueryRejection>,
    ) -> Result<Ctx, ApiError> {
        let caller = st.caller(headers)?;
        let kind = Kind::from_segment(segment)
            .ok_or_else(|| ApiError::not_found(format!("no self-service kind {segment:?}")))?;
        let query = query
            .map_err(|e| ApiError::invalid("client", e.body_text()))?
            .0;
        let client_id = client_of(&caller, query.client.as_deref())?;
        let home = namespace::home_of(&st.client, &client_id).await?;
        Ok(Ctx {
            kind,
            client_id,
            home,
            kube: st.client.clone(),
            settings: st.self_service.clone(),
        })
    }

    fn api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.kube.clone(),
            &self.home.namespace,
            &self.kind.api_resource(),
        )
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.kube.clone(), &self.home.namespace)
    }

    fn what(&self, name: &str) -> String {
        format!("{}/{name}", self.kind.segment())
    }

    /// Whether `o` is one of the caller's self-service resources (labels, the exact id in
    /// the annotation and in `spec.clientId`).
    fn owns(&self, o: &DynamicObject) -> bool {
        let exact = o
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CLIENT_LABEL))
            .is_some_and(|c| *c == self.client_id);
        marked(&o.metadata, &self.client_id)
            && exact
            && o.data["spec"]["clientId"].as_str() == Some(self.client_id.as_str())
    }

    /// Whether `meta` is the credentials Secret of the caller's resource `name`.
    fn owns_secret(&self, meta: &ObjectMeta, name: &str) -> bool {
        let a = meta.annotations.as_ref();
        marked(meta, &self.client_id)
            && a.and_then(|a| a.get(CLIENT_LABEL)) == Some(&self.client_id)
            && a.and_then(|a| a.get(labels::CREDENTIALS_OF_ANNOTATION))
                == Some(&self.credentials_of(name))
    }

    fn credentials_of(&self, name: &str) -> String {
        format!("{}/{name}", self.kind.short())
    }

    /// The caller's resource `name`, or 404 (whether it is missing or not the caller's).
    async fn owned(&self, name: &str) -> Result<DynamicObject, ApiError> {
        check_name(name)?;
        match self.api().get_opt(name).await {
            Ok(Some(o)) if self.owns(&o) => Ok(o),
            Ok(_) => Err(ApiError::not_found(format!(
                "{} not found",
                self.what(name)
            ))),
            Err(e) => Err(from_kube(e, &self.what(name))),
        }
    }

    /// The metadata of `name`'s credentials Secret, if there is one of the caller's.
    async fn owned_secret(&self, name: &str) -> Result<Option<ObjectMeta>, ApiError> {
        let secret = self.kind.secret_name(name);
        match self.secrets().get_metadata_opt(&secret).await {
            Ok(Some(s)) if self.owns_secret(&s.metadata, name) => Ok(Some(s.metadata)),
            Ok(_) => Ok(None),
            Err(e) => Err(from_kube(e, &format!("secrets/{secret}"))),
        }
    }

    /// The spec to write: the client's, its `clientId` forced to the caller's client, its
    /// Secret references set for `keys`.
    fn spec(
        &self,
        sent: Value,
        name: &str,
        keys: &CredentialSet,
    ) -> Result<Map<String, Value>, ApiError> {
        let Value::Object(mut spec) = sent else {
            return Err(ApiError::invalid(
                "spec",
                "spec must be an object (the resource's spec, as in the CRD)",
            ));
        };
        match spec.get("clientId") {
            None => {}
            Some(Value::String(c)) if *c == self.client_id => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    "spec.clientId",
                    format!(
                        "spec.clientId must be {:?}, the client this request is for (or left out)",
                        self.client_id
                    ),
                ));
            }
        }
        self.kind.check_client_spec(&spec)?;
        spec.insert("clientId".into(), Value::String(self.client_id.clone()));
        self.kind
            .set_refs(&mut spec, &self.kind.secret_name(name), keys);
        Ok(spec)
    }

    /// Labels of what this API creates for the caller (plus those the operator's selector
    /// needs).
    fn labels(&self, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut l = extra.clone();
        l.insert(SELF_SERVICE_LABEL.into(), "true".into());
        l.insert(
            CLIENT_LABEL.into(),
            labels::client_label_value(&self.client_id),
        );
        l
    }

    /// Creates or updates a resource with strict field validation (an unknown field is
    /// refused, not silently dropped); `name` is set for a PUT.
    async fn write(&self, object: &Value, name: Option<&str>) -> Result<DynamicObject, ApiError> {
        let ar = self.kind.api_resource();
        let mut path = format!(
            "/apis/{}/namespaces/{}/{}",
            ar.api_version, self.home.namespace, ar.plural
        );
        let method = match name {
            Some(n) => {
                path = format!("{path}/{n}");
                Method::PUT
            }
            None => Method::POST,
        };
        let what = self.what(
            name.or(object["metadata"]["name"].as_str())
                .unwrap_or_default(),
        );
        let request = axum::http::Request::builder()
            .method(method)
            .uri(format!(
                "{path}?fieldValidation=Strict&fieldManager={FIELD_MANAGER}"
            ))
            .header("content-type", "application/json")
            .body(object.to_string().into_bytes())
            .map_err(|e| ApiError::unavailable(format!("building the request: {e}")))?;
        self.kube
            .request::<DynamicObject>(request)
            .await
            .map_err(|e| from_kube(e, &what))
    }

    /// Creates `name`'s credentials Secret, owned by `owner` (so it goes with it); takes
    /// over a leftover Secret of the same resource, refuses any other.
    async fn create_secret(
        &self,
        name: &str,
        owner: &DynamicObject,
        keys: &CredentialSet,
        change: &Change,
    ) -> Result<(), ApiError> {
        let secret_name = self.kind.secret_name(name);
        let annotations = BTreeMap::from([
            (CLIENT_LABEL.to_string(), self.client_id.clone()),
            (
                labels::CREDENTIALS_OF_ANNOTATION.to_string(),
                self.credentials_of(name),
            ),
            (
                labels::CREDENTIALS_ANNOTATION.to_string(),
                keys.annotation(),
            ),
        ]);
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                labels: Some(self.labels(&self.settings.secret_labels)),
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: self.kind.api_version(),
                    kind: self.kind.kind_name().into(),
                    name: name.into(),
                    uid: owner.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            string_data: Some(
                change
                    .data
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        };
        let what = format!("secrets/{secret_name}");
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match self.secrets().create(&pp, &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Left by a resource of the same name whose deletion did not take it along?
                let existing = self
                    .secrets()
                    .get_metadata(&secret_name)
                    .await
                    .map_err(|e| from_kube(e, &what))?;
                if !self.owns_secret(&existing.metadata, name) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!(
                            "Secret {secret_name} exists and is not this resource's credentials; choose another name"
                        ),
                    ));
                }
                secret.metadata.resource_version = existing.metadata.resource_version;
                self.secrets()
                    .replace(&secret_name, &pp, &secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| from_kube(e, &what))
            }
            Err(e) => Err(from_kube(e, &what)),
        }
    }

    async fn delete_secret(&self, name: &str) -> Result<(), ApiError> {
        let secret = self.kind.secret_name(name);
        match self
            .secrets()
            .delete(&secret, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(from_kube(e, &format!("secrets/{secret}"))),
        }
    }
}

/// Both kinds of objects this API writes carry the self-service label and the client's.
fn marked(meta: &ObjectMeta, client: &str) -> bool {
    let l = meta.labels.as_ref();
    l.and_then(|l| l.get(SELF_SERVICE_LABEL))
        .map(String::as_str)
        == Some("true")
        && l.and_then(|l| l.get(CLIENT_LABEL)) == Some(&labels::client_label_value(client))
}

/// The client a request is for: `client` if the token may act for it; without it, the
/// token's only client.
fn client_of(caller: &Caller, client: Option<&str>) -> Result<String, ApiError> {
    use crate::ingest::tokens::Grant;
    match client {
        Some(c) if c.is_empty() || c.len() > 128 => Err(ApiError::invalid(
            "client",
            "client must be a client id (1 to 128 characters)",
        )),
        Some(c) if caller.may_see(c) => Ok(c.to_string()),
        Some(c) => Err(ApiError {
            field: Some("client".into()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_client",
                format!("this token is not bound to client {c:?}"),
            )
        }),
        None => match &caller.grant {
            Grant::Clients(set) if set.len() == 1 => {
                Ok(set.iter().next().cloned().unwrap_or_default())
            }
            _ => Err(ApiError::invalid(
                "client",
                "this token acts for several clients: name one with ?client=",
            )),
        },
    }
}

/// Names are DNS-1123 labels: the credentials Secret's name is made from them.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        "name",
        format!(
            "{name:?} is not a DNS-1123 label: 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ),
    ))
}

fn parse_body(bytes: &Bytes) -> Result<Body, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            "$",
            format!("the body must be {{\"name\", \"spec\", \"credentials\"}} as JSON: {e}"),
        )
    })
}

/// `GET /v1/self-service/{kind}`: the caller's resources of that kind, by name.
async fn list(
    State(st): State<ManageState>,
    Path(segment): Path<String>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = Ctx::new(&st, &headers, &segment, query).await?;
    let lp = ListParams::default().labels(&labels::selector(&ctx.client_id));
    let objects = ctx
        .api()
        .list(&lp)
        .await
        .map_err(|e| from_kube(e, ctx.kind.segment()))?;
    let secrets = ctx
        .secrets()
        .list_metadata(&lp)
        .await
        .map_err(|e| from_kube(e, "secrets"))?;
    let mut items: Vec<ResourceView> = objects
        .items
        .into_iter()
        .filter(|o| ctx.owns(o))
        .map(|o| {
            let name = o.metadata.name.clone().unwrap_or_default();
            let keys = secrets
                .items
                .iter()
                .find(|s| {
                    s.metadata.name.as_deref() == Some(&ctx.kind.secret_name(&name))
                        && ctx.owns_secret(&s.metadata, &name)
                })
                .map(|s| credentials::names_of(s.metadata.annotations.as_ref()))
                .unwrap_or_default();
            ResourceView::of(ctx.kind, &ctx.client_id, o, &keys)
        })
        .collect();
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// `GET /v1/self-service/{kind}/{name}`.
async fn read(
    State(st): State<ManageState>,
    Path((segment, name)): Path<(String, String)>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = Ctx::new(&st, &headers, &segment, query).await?;
    let o = ctx.owned(&name).await?;
    let keys = ctx
        .owned_secret(&name)
        .await?
        .map(|m| credentials::names_of(m.annotations.as_ref()))
        .unwrap_or_default();
    Ok(axum::Json(ResourceView::of(ctx.kind, &ctx.client_id, o, &keys)).into_response())
}

/// `POST /v1/self-service/{kind}`: creates a resource and its credentials Secret.
async fn create(
    State(st): State<ManageState>,
    Path(segment): Path<String>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = Ctx::new(&st, &headers, &segment, query).await?;
    ctx.home.require_allowed(&ctx.client_id)?;
    let body = parse_body(&body)?;
    let name = body
        .name
        .ok_or_else(|| ApiError::invalid("name", "name is required"))?;
    check_name(&name)?;
    let change = Change::parse(ctx.kind, body.credentials.as_ref())?;
    let keys = change.apply_to(&CredentialSet::default());
    credentials::check_complete(ctx.kind, &keys)?;
    let spec = ctx.spec(body.spec, &name, &keys)?;
    let object = json!({
        "apiVersion": ctx.kind.api_version(),
        "kind": ctx.kind.kind_name(),
        "metadata": {
            "name": name,
            "namespace": ctx.home.namespace,
            "labels": ctx.labels(&ctx.settings.resource_labels),
            "annotations": { CLIENT_LABEL: ctx.client_id },
        },
        "spec": spec,
    });
    let created = ctx.write(&object, None).await?;
    if !keys.is_empty()
        && let Err(e) = ctx.create_secret(&name, &created, &keys, &change).await
    {
        // Without its credentials the resource would only fail: take it back.
        if let Err(undo) = ctx.api().delete(&name, &DeleteParams::default()).await {
            tracing::warn!(namespace = %ctx.home.namespace, name, error = %undo, "self-service: removing a resource whose Secret could not be written");
        }
        return Err(e);
    }
    tracing::info!(namespace = %ctx.home.namespace, kind = ctx.kind.kind_name(), name, client = %ctx.client_id, "self-service: created");
    let view = ResourceView::of(ctx.kind, &ctx.client_id, created, &keys);
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// `PUT /v1/self-service/{kind}/{name}`: replaces the spec; credentials left out are kept.
/// Read-change-write rounds of a `PUT` without `resourceVersion` lost to a concurrent write
/// (a status write, say) before the conflict is the caller's.
const UPDATE_CONFLICT_RETRIES: u32 = 5;

async fn update(
    State(st): State<ManageState>,
    Path((segment, name)): Path<(String, String)>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = Ctx::new(&st, &headers, &segment, query).await?;
    let mut existing = ctx.owned(&name).await?;
    ctx.home.require_allowed(&ctx.client_id)?;
    let body = parse_body(&body)?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::invalid(
            "name",
            "name cannot change (it is the path's); create a new resource instead",
        ));
    }
    let change = Change::parse(ctx.kind, body.credentials.as_ref())?;
    let secret = ctx.owned_secret(&name).await?;
    let before = secret
        .as_ref()
        .map(|m| credentials::names_of(m.annotations.as_ref()))
        .unwrap_or_default();
    let after = change.apply_to(&before);
    credentials::check_complete(ctx.kind, &after)?;
    let spec = ctx.spec(body.spec.clone(), &name, &after)?;
    // Read, change, write. The operator writes status all the time, and each write changes
    // the resourceVersion: unless the caller gave one, a conflict is read again and retried
    // (a `generation` the caller gave is checked again on each read: status leaves it).
    let mut conflicts = 0;
    let updated = loop {
        if let Some(read) = body.generation
            && existing.metadata.generation != Some(read)
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "{}/{name} was changed meanwhile (generation {read}, now {}); read it again and retry",
                    ctx.kind.segment(),
                    existing.metadata.generation.unwrap_or_default()
                ),
            ));
        }
        let mut object = serde_json::to_value(&existing)
            .map_err(|e| ApiError::unavailable(format!("encoding {name}: {e}")))?;
        object["spec"] = Value::Object(spec.clone());
        if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("managedFields");
            if let Some(rv) = &body.resource_version {
                m.insert("resourceVersion".into(), Value::String(rv.clone()));
            }
        }
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        match ctx.write(&object, Some(&name)).await {
            Err(e)
                if e.status == StatusCode::CONFLICT
                    && body.resource_version.is_none()
                    && conflicts < UPDATE_CONFLICT_RETRIES =>
            {
                conflicts += 1;
                existing = ctx.owned(&name).await?;
            }
            other => break other?,
        }
    };

    match secret {
        Some(_) if after.is_empty() => ctx.delete_secret(&name).await?,
        Some(_) => {
            let stale = Change::stale_keys(&before, &after);
            let patch = json!({
                "metadata": { "annotations": { labels::CREDENTIALS_ANNOTATION: after.annotation() } },
                "data": credentials::data_patch(&change, &stale),
            });
            let secret_name = ctx.kind.secret_name(&name);
            ctx.secrets()
                .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| from_kube(e, &format!("secrets/{secret_name}")))?;
        }
        None if !after.is_empty() => ctx.create_secret(&name, &updated, &after, &change).await?,
        None => {}
    }
    tracing::info!(namespace = %ctx.home.namespace, kind = ctx.kind.kind_name(), name, client = %ctx.client_id, "self-service: updated");
    Ok(axum::Json(ResourceView::of(ctx.kind, &ctx.client_id, updated, &after)).into_response())
}

/// `DELETE /v1/self-service/{kind}/{name}`: the resource and its credentials Secret.
async fn remove(
    State(st): State<ManageState>,
    Path((segment, name)): Path<(String, String)>,
    query: Result<Query<ClientQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = Ctx::new(&st, &headers, &segment, query).await?;
    let existing = ctx.owned(&name).await?;
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: existing.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    ctx.api()
        .delete(&name, &dp)
        .await
        .map_err(|e| from_kube(e, &ctx.what(&name)))?;
    // The owner reference lets the garbage collector take the Secret; delete it now anyway,
    // since a cluster without one (or a slow one) would keep credentials of nothing.
    if ctx.owned_secret(&name).await?.is_some() {
        ctx.delete_secret(&name).await?;
    }
    tracing::info!(namespace = %ctx.home.namespace, kind = ctx.kind.kind_name(), name, client = %ctx.client_id, "self-service: deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::tokens::Grant;

    fn caller(clients: &[&str]) -> Caller {
        Caller {
            grant: Grant::Clients(clients.iter().map(|c| c.to_string()).collect()),
        }
    }

    #[test]
    fn which_client() {
        assert_eq!(client_of(&caller(&["a"]), None).unwrap(), "a");
        assert_eq!(client_of(&caller(&["a", "b"]), Some("b")).unwrap(), "b");
        let e = client_of(&caller(&["a", "b"]), None).unwrap_err();
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("client"))
        );
        let e = client_of(&caller(&["a"]), Some("b")).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let star = Caller {
            grant: Grant::AnyClient,
        };
        assert!(client_of(&star, None).is_err());
        assert_eq!(client_of(&star, Some("z")).unwrap(), "z");
    }

    #[test]
    fn names() {
        for ok in ["crm", "a", "crm-2", &"a".repeat(63)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "Crm", "a.b", "a_b", &"a".repeat(64)] {
            assert_eq!(check_name(bad).unwrap_err().field.as_deref(), Some("name"));
        }
    }
}
