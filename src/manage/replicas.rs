//! The delivery log of every replica, when replicas share a JetStream log: each replica
//! keeps the attempts it made in its own store, so a query asks them all over NATS (a
//! request on [`SUBJECT`] that every replica answers) and merges the answers, newest first.
//! An entry's id names its replica (`<replica>.<id>`), and a page's cursor holds a position per
//! replica. The answering replicas apply the caller's client restriction themselves, so a
//! client's token sees only its own clients' entries here as on one replica.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deliveries::{ListParams, event_view, parse_list};
use super::{ApiError, Caller};
use crate::cluster::adopted::Adopted;
use crate::ingest::tokens::Grant;
use crate::store::Store;

/// Where delivery log requests go; every replica listens.
pub const SUBJECT: &str = "vc.manage.log";
/// How long a query waits for the replicas' answers: a replica that does not answer in time
/// (stalled, or gone since the member list was read) is left out of that answer.
const WAIT: Duration = Duration::from_secs(5);
/// Marks a cursor of the merged log.
const CURSOR_PREFIX: &str = "r1.";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Request {
    /// A page of each replica's log (the list's parameters, without the cursor).
    List {
        params: Box<ListParams>,
        /// The caller's clients; `None`: every client.
        clients: Option<Vec<String>>,
        /// Per replica: entries before this id; `None` once its log is read to the end.
        /// Replicas not named start at their newest entry.
        before: BTreeMap<String, Option<u64>>,
    },
    /// One entry of one replica's log.
    Entry { replica: String, id: u64 },
    /// One event's attempts in each replica's log.
    Event { client: String, id: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Answer {
    replica: String,
    /// The live replica that answered: another than `replica` for a gone replica's log.
    #[serde(default)]
    by: String,
    /// Entries as the API shows them (ids already `<replica>.<id>`), newest first, with
    /// (when it ended, local id) to merge them by.
    entries: Vec<(u64, u64, Value)>,
    /// Where this replica's next page starts (its page was full).
    next: Option<u64>,
    /// An event's view (`Event`).
    event: Option<Value>,
    /// A gone replica's attempts of an event (`Event`), per target: its store holds no events.
    #[serde(default)]
    targets: Vec<Value>,
}

/// Asks the replicas about their delivery logs. Cheap to clone.
#[derive(Clone)]
pub struct Replicas {
    nats: async_nats::Client,
    me: String,
    /// The live replicas now.
    members: std::sync::Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The logs of replicas gone for good, some served here.
    adopted: Adopted,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("me", &self.me).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the other replicas cannot be asked now: {e}"))
}

/// The API id of `replica`'s entry `id`.
fn entry_id(replica: &str, id: u64) -> String {
    format!("{replica}.{id}")
}

impl Replicas {
    pub fn new(
        nats: async_nats::Client,
        me: String,
        members: std::sync::Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        adopted: Adopted,
    ) -> Self {
        Replicas {
            nats,
            me,
            members,
            adopted,
        }
    }

    /// Every replica whose log a query covers: the live ones and the gone ones served by one.
    fn everyone(&self) -> std::collections::BTreeSet<String> {
        let mut all: std::collections::BTreeSet<String> = (self.members)().into_iter().collect();
        all.extend(self.adopted.gone());
        all
    }

    /// Answers the other replicas' (and this one's own) requests from `store`, until the
    /// connection closes.
    pub async fn serve(self, store: Store) {
        let mut requests = match self.nats.subscribe(SUBJECT).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot answer delivery log requests of other replicas");
                return;
            }
        };
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let Ok(request) = serde_json::from_slice::<Request>(&message.payload) else {
                tracing::warn!("a delivery log request that is not one; ignored");
                continue;
            };
            let request = std::sync::Arc::new(request);
            let mine = std::iter::once((self.me.clone(), store.clone(), false)).chain(
                self.adopted
                    .stores()
                    .into_iter()
                    .map(|(gone, store)| (gone, store, true)),
            );
            for (name, store, gone) in mine {
                let (me, nats) = (self.me.clone(), self.nats.clone());
                let (request, reply) = (request.clone(), reply.clone());
                tokio::spawn(async move {
                    let answered = tokio::task::spawn_blocking(move || {
                        let mut a = answer(&name, &store, &request, gone);
                        if let Ok(Some(a)) = &mut a {
                            a.by = me;
                        }
                        a
                    })
                    .await;
                    match answered {
                        Ok(Ok(Some(a))) => {
                            if let Ok(bytes) = serde_json::to_vec(&a)
                                && let Err(e) = nats.publish(reply, bytes.into()).await
                            {
                                tracing::warn!(error = %e, "could not answer a delivery log request");
                            }
                        }
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "a delivery log request failed here");
                        }
                        Err(e) => tracing::warn!(error = %e, "a delivery log request failed here"),
                    }
                });
            }
        }
    }

    /// Sends `request` and collects up to `want` answers, for at most [`WAIT`].
    async fn ask(&self, request: &Request, want: usize) -> Result<Vec<Answer>, ApiError> {
        let inbox = self.nats.new_inbox();
        let mut answers = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable)?;
        let payload = serde_json::to_vec(request).map_err(unavailable)?;
        self.nats
            .publish_with_reply(SUBJECT, inbox, payload.into())
            .await
            .map_err(unavailable)?;
        // One answer per replica: a replica back from gone answers for itself while the one
        // that served its log has not let go yet, and its own answer counts. Counted by
        // replica, so such a pair never stands in for a replica that has not answered yet.
        let mut by_replica: BTreeMap<String, Answer> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while by_replica.len() < want {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(m)) => {
                    if let Ok(a) = serde_json::from_slice::<Answer>(&m.payload) {
                        let own = a.by == a.replica;
                        match by_replica.get(&a.replica) {
                            Some(have) if have.by == have.replica || !own => {}
                            _ => {
                                by_replica.insert(a.replica.clone(), a);
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let out: Vec<Answer> = by_replica.into_values().collect();
        if out.len() < want {
            tracing::warn!(
                answered = out.len(),
                replicas = want,
                "not every replica answered a delivery log request in time"
            );
        }
        Ok(out)
    }

    /// A page of the merged log: what [`super::deliveries::list`] answers on one replica.
    pub async fn list(
        &self,
        caller: &Caller,
        mut params: ListParams,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        let mut before = match params.cursor.take().filter(|c| !c.is_empty()) {
            Some(c) => decode_cursor(&c)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this API"))?,
            None => BTreeMap::new(),
        };
        // Checked here too, so a bad parameter is a 400, not an empty merge.
        let Some(query) = parse_list(caller, params.clone())? else {
            return Ok((Vec::new(), None));
        };
        let clients = match &caller.grant {
            Grant::AnyClient => None,
            Grant::Clients(set) => Some(set.iter().cloned().collect()),
        };
        // Every live replica, and every one an earlier page had (a replica whose membership
        // renewal is late is still asked for).
        let mut known = self.everyone();
        known.extend(before.keys().cloned());
        let want = known.len().max(1);
        let request = Request::List {
            params: Box::new(params),
            clients,
            before: before.clone(),
        };
        let answers = self.ask(&request, want).await?;
        let mut all: Vec<(u64, &str, u64, &Value)> = answers
            .iter()
            .flat_map(|a| {
                a.entries
                    .iter()
                    .map(move |(at, id, v)| (*at, a.replica.as_str(), *id, v))
            })
            .collect();
        // Newest first; ties by replica and its own order.
        all.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(y.1)).then(y.2.cmp(&x.2)));
        all.truncate(query.limit);
        for a in &answers {
            let shown: Vec<u64> = all
                .iter()
                .filter(|e| e.1 == a.replica)
                .map(|e| e.2)
                .collect();
            let position = if shown.len() == a.entries.len() {
                // All of this page shown: on from where its own page ended, or its end.
                a.next
            } else {
                match shown.last() {
                    Some(last) => Some(*last),
                    // None of it shown: it starts where it did.
                    None => continue,
                }
            };
            before.insert(a.replica.clone(), position);
        }
        let entries = all.into_iter().map(|e| e.3.clone()).collect();
        // The end only once every replica known has said it has nothing more.
        known.extend(answers.iter().map(|a| a.replica.clone()));
        let done = known.iter().all(|r| matches!(before.get(r), Some(None)));
        Ok((entries, (!done).then(|| encode_cursor(&before))))
    }

    /// One entry, by its API id `<replica>.<id>`: `None` when there is none.
    pub async fn entry(&self, api_id: &str) -> Result<Option<Value>, ApiError> {
        let Some((replica, id)) = api_id
            .rsplit_once('.')
            .and_then(|(r, n)| Some((r.to_owned(), n.parse::<u64>().ok()?)))
        else {
            return Ok(None);
        };
        let answers = self.ask(&Request::Entry { replica, id }, 1).await?;
        Ok(answers
            .into_iter()
            .next()
            .and_then(|a| a.entries.into_iter().next())
            .map(|e| e.2))
    }

    /// One event's view merged over every replica's log: `None` when no replica knows it.
    pub async fn event(&self, client: &str, id: &str) -> Result<Option<Value>, ApiError> {
        let want = self.everyone().len().max(1);
        let request = Request::Event {
            client: client.to_owned(),
            id: id.to_owned(),
        };
        let answers = self.ask(&request, want).await?;
        let gone: Vec<Value> = answers.iter().flat_map(|a| a.targets.clone()).collect();
        let views: Vec<Value> = answers.into_iter().filter_map(|a| a.event).collect();
        if views.is_empty() {
            return Ok(None);
        }
        let gone = (!gone.is_empty()).then(|| serde_json::json!({ "targets": gone }));
        Ok(merge_views(views.into_iter().chain(gone).collect()))
    }
}

/// The answer to `request` about the log of `me` in `store` (a gone replica's when `gone`);
/// `None` when it is not this log's to answer.
fn answer(
    me: &str,
    store: &Store,
    request: &Request,
    gone: bool,
) -> Result<Option<Answer>, String> {
    let mut out = Answer {
        replica: me.to_owned(),
        ..Answer::default()
    };
    match request {
        Request::List {
            params,
            clients,
            before,
        } => {
            let from = before.get(me).copied();
            if from == Some(None) {
                // Read to the end already.
                return Ok(Some(out));
            }
            let caller = Caller {
                grant: match clients {
                    None => Grant::AnyClient,
                    Some(c) => Grant::Clients(c.iter().cloned().collect()),
                },
            };
            let Some(mut query) = parse_list(&caller, (**params).clone()).map_err(|e| e.message)?
            else {
                return Ok(Some(out));
            };
            query.before = from.flatten();
            let page = store.attempts(&query).map_err(|e| e.to_string())?;
            out.next = page.next.map(|c| c.0);
            for e in page.entries {
                out.entries.push((e.at_unix_ms, e.id, shown(me, &e)));
            }
        }
        Request::Entry { replica, id } => {
            if replica != me {
                return Ok(None);
            }
            if let Some(e) = store.attempt(*id).map_err(|e| e.to_string())? {
                out.entries.push((e.at_unix_ms, e.id, shown(me, &e)));
            }
        }
        Request::Event { client, id } if gone => {
            out.targets = gone_attempts(me, store, client, id)?;
        }
        Request::Event { client, id } => {
            let view = event_view(store, client, id).map_err(|e| e.to_string())?;
            out.event = view.map(|v| {
                let mut v = serde_json::to_value(&v).unwrap_or(Value::Null);
                name_attempts(me, &mut v);
                v
            });
        }
    }
    Ok(Some(out))
}

/// A gone replica's attempts of one event, per target as an event view lists them (its store
/// holds entries only: the event itself is found where it is held, by a live replica).
fn gone_attempts(me: &str, store: &Store, client: &str, id: &str) -> Result<Vec<Value>, String> {
    let mut query = crate::store::AttemptQuery {
        target: None,
        results: None,
        vehicle: None,
        event_type: None,
        event_id: Some(id.to_owned()),
        clients: Some(vec![client.to_owned()]),
        since_unix_ms: None,
        until_unix_ms: None,
        before: None,
        limit: 500,
    };
    let mut per: BTreeMap<String, (crate::store::EntryTarget, Vec<Value>)> = BTreeMap::new();
    loop {
        let page = store.attempts(&query).map_err(|e| e.to_string())?;
        for e in &page.entries {
            per.entry(e.target.row.clone())
                .or_insert_with(|| (e.target.clone(), Vec::new()))
                .1
                .push(shown(me, e));
        }
        match page.next {
            Some(c) => query.before = Some(c.0),
            None => break,
        }
    }
    Ok(per
        .into_values()
        .map(|(target, mut attempts)| {
            // Pages come newest first; a view lists attempts oldest first.
            attempts.reverse();
            serde_json::json!({ "target": target, "pending": false, "attempts": attempts })
        })
        .collect())
}

/// `e` as the API shows it, its id naming this replica.
fn shown(me: &str, e: &crate::store::AttemptEntry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    v["id"] = Value::String(entry_id(me, e.id));
    v
}

/// The attempts of an event view with ids naming this replica.
fn name_attempts(me: &str, view: &mut Value) {
    let Some(targets) = view["targets"].as_array_mut() else {
        return;
    };
    for t in targets {
        let Some(attempts) = t["attempts"].as_array_mut() else {
            continue;
        };
        for a in attempts {
            if let Some(id) = a["id"].as_str().and_then(|s| s.parse::<u64>().ok()) {
                a["id"] = Value::String(entry_id(me, id));
            }
        }
    }
}

/// One view of an event from the replicas' views: targets merged by their uid (pending if
/// pending anywhere), attempts oldest first.
fn merge_views(views: Vec<Value>) -> Option<Value> {
    let mut views = views.into_iter();
    let mut base = views.next()?;
    let mut targets: BTreeMap<String, Value> = BTreeMap::new();
    let key = |t: &Value| t["target"].to_string();
    let mut add = |list: &mut Value| {
        if let Some(ts) = list["targets"].as_array_mut() {
            for t in ts.drain(..) {
                match targets.get_mut(&key(&t)) {
                    Some(have) => {
                        let pending = have["pending"].as_bool().unwrap_or(false)
                            || t["pending"].as_bool().unwrap_or(false);
                        have["pending"] = Value::Bool(pending);
                        if let (Some(a), Some(b)) =
                            (have["attempts"].as_array_mut(), t["attempts"].as_array())
                        {
                            a.extend(b.iter().cloned());
                        }
                    }
                    None => {
                        targets.insert(key(&t), t);
                    }
                }
            }
        }
    };
    add(&mut base);
    for mut v in views {
        add(&mut v);
    }
    let merged: Vec<Value> = targets
        .into_values()
        .map(|mut t| {
            if let Some(a) = t["attempts"].as_array_mut() {
                // RFC 3339 UTC with milliseconds: the text sorts as the time does.
                a.sort_by(|x, y| x["at"].as_str().cmp(&y["at"].as_str()));
            }
            t
        })
        .collect();
    base["targets"] = Value::Array(merged);
    Some(base)
}

fn encode_cursor(before: &BTreeMap<String, Option<u64>>) -> String {
    let json = serde_json::to_vec(before).unwrap_or_default();
    format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
}

fn decode_cursor(s: &str) -> Option<BTreeMap<String, Option<u64>>> {
    let b = URL_SAFE_NO_PAD
        .decode(s.strip_prefix(CURSOR_PREFIX)?)
        .ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursors_round_trip_and_refuse_others() {
        let mut m = BTreeMap::new();
        m.insert("vc-0".to_owned(), Some(42));
        m.insert("vc-1".to_owned(), None);
        assert_eq!(decode_cursor(&encode_cursor(&m)), Some(m));
        assert_eq!(decode_cursor("AQAAAAAAAEe2"), None);
    }

    #[test]
    fn views_merge_per_target_pending_anywhere_attempts_by_time() {
        let target =
            json!({"kind": "webhooksubscription", "namespace": "n", "name": "a", "uid": "u"});
        let a = json!({"id": "e", "targets": [
            {"target": target, "pending": false, "attempts": [{"id": "vc-0.2", "at": "2026-12-03T10:00:02.000Z"}]}]});
        let b = json!({"id": "e", "targets": [
            {"target": target, "pending": true, "attempts": [{"id": "vc-1.7", "at": "2026-12-03T10:00:01.000Z"}]},
            {"target": {"kind": "ftpconnection", "namespace": "n", "name": "b", "uid": "v"}, "pending": false, "attempts": []}]});
        let m = merge_views(vec![a, b]).unwrap();
        let ts = m["targets"].as_array().unwrap();
        assert_eq!(ts.len(), 2);
        let hook = ts.iter().find(|t| t["target"]["name"] == "a").unwrap();
        assert_eq!(hook["pending"], true);
        let ids: Vec<_> = hook["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["vc-1.7", "vc-0.2"]);
        assert_eq!(merge_views(Vec::new()), None);
    }
}
