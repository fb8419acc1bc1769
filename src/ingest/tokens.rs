//! Accepted bearer tokens and the clients each may post for, from a file (see [`parse`]).
//! Kept as SHA-256 digests; the file is re-read when it changes, so a rotated Secret takes
//! effect without a restart.
//!
//! File format, one token a line:
//!
//! ```text
//! # comments start with '#', at the start of a line or after whitespace
//! platform-token-0123456789            # no clients: may post for any client (= `*`)
//! platform-token-abcdef0123 *          # the same, said explicitly
//! dealer-token-0123456789 dealer-123   # only for clientId dealer-123
//! group-token-0123456789 dealer-1,dealer-2 , dealer-3
//! ```
//!
//! A token never contains whitespace, so the first field is the token and the rest of the
//! line (up to a comment) is its comma-separated client list. A file of bare tokens, the
//! format before clients existed, keeps its meaning: every token may post for any client.
//!
//! The feed token file (who may read `GET /v1/events`) has the same format, except that a
//! bare token is refused: a reader of every client's events must say `*`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// What a token may post for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `*`: any client (the platform itself).
    AnyClient,
    /// Only these clientIds.
    Clients(BTreeSet<String>),
}

impl Grant {
    pub fn allows(&self, client: &str) -> bool {
        match self {
            Grant::AnyClient => true,
            Grant::Clients(c) => c.contains(client),
        }
    }
}

/// A token file that cannot be used; names the line.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token file: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

type Entry = ([u8; 32], Grant);

/// Which token file: what a token without clients means, and how logs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFile {
    /// `--ingest-token-file`: a bare token may post for any client (the format before clients).
    Ingest,
    /// `--feed-token-file`: every token names its clients, or `*`.
    Feed,
    /// `--manage-token-file`: as the feed's; `*` is the platform operator, a client list is
    /// that client's self-service.
    Manage,
}

impl TokenFile {
    fn name(self) -> &'static str {
        match self {
            TokenFile::Ingest => "ingest",
            TokenFile::Feed => "feed",
            TokenFile::Manage => "manage",
        }
    }
}

#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Arc<RwLock<Vec<Entry>>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Client ids as the envelope accepts them (`clientId`).
pub(crate) fn client_like(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '@'))
}

/// Parses an ingest token file (format in the module documentation). Refuses the whole file
/// on any bad line, so a typo never silently widens or drops a grant.
pub fn parse(text: &str) -> Result<Vec<(String, Grant)>, TokenFileError> {
    parse_as(text, TokenFile::Ingest)
}

/// Parses a token file of `kind`.
pub fn parse_as(text: &str, kind: TokenFile) -> Result<Vec<(String, Grant)>, TokenFileError> {
    let mut out: Vec<(String, Grant)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let bad = |why: String| TokenFileError::Line { line: i + 1, why };
        // A comment starts at a '#' that begins the line or follows whitespace.
        let mut fields = Vec::new();
        for f in raw.split_whitespace() {
            if f.starts_with('#') {
                break;
            }
            fields.push(f);
        }
        let Some((token, rest)) = fields.split_first() else {
            continue;
        };
        // The client list may have spaces around its commas, but a space *instead of* a
        // comma (`tok a b`) is ambiguous: refused.
        let list = rest.join(" ");
        let mut clients = Vec::new();
        for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if c.contains(char::is_whitespace) {
                return Err(bad(format!(
                    "clients must be separated by commas, e.g. `<token> {}`",
                    c.split_whitespace().collect::<Vec<_>>().join(",")
                )));
            }
            clients.push(c);
        }
        if clients.is_empty() && kind != TokenFile::Ingest {
            return Err(bad(format!(
                "a {} token must name its clients (`<token> dealer-1`), or `*` for any client",
                kind.name()
            )));
        }
        let grant = if clients.is_empty() || clients == ["*"] {
            Grant::AnyClient
        } else if clients.contains(&"*") {
            return Err(bad("`*` (any client) must stand alone".into()));
        } else if let Some(c) = clients.iter().find(|c| !client_like(c)) {
            return Err(bad(format!(
                "{c:?} is not a clientId (1-128 of A-Z a-z 0-9 _ . : - @)"
            )));
        } else {
            Grant::Clients(clients.iter().map(|c| c.to_string()).collect())
        };
        if out.iter().any(|(t, _)| t == token) {
            return Err(bad(
                "the same token is listed twice; list its clients on one line".into(),
            ));
        }
        out.push((token.to_string(), grant));
    }
    Ok(out)
}

impl TokenSet {
    /// Tokens that may post for any client.
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        Self::from_grants(tokens.into_iter().map(|t| (t, Grant::AnyClient)))
    }

    pub fn from_grants<'a>(grants: impl IntoIterator<Item = (&'a str, Grant)>) -> Self {
        let set = TokenSet::default();
        set.replace(grants.into_iter().map(|(t, g)| (digest(t), g)).collect());
        set
    }

    fn replace(&self, e: Vec<Entry>) {
        if let Ok(mut g) = self.entries.write() {
            *g = e;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|d| d.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `token` may post for, or `None` for an unknown token. Compares every digest in
    /// full (no early exit) so timing does not reveal prefixes or positions.
    pub fn grant(&self, token: &str) -> Option<Grant> {
        let d = digest(token);
        let list = self.entries.read().ok()?;
        let mut hit = None;
        for (t, g) in list.iter() {
            let same = t
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                hit = Some(g);
            }
        }
        hit.cloned()
    }

    pub fn accepts(&self, token: &str) -> bool {
        self.grant(token).is_some()
    }

    /// Loads the ingest token file `path` and keeps reloading it (every few seconds when its
    /// mtime changes).
    pub fn watch_file(path: PathBuf) -> Result<Self, TokenFileError> {
        Self::watch_file_as(path, TokenFile::Ingest)
    }

    /// [`Self::watch_file`] for a token file of `kind`.
    pub fn watch_file_as(path: PathBuf, kind: TokenFile) -> Result<Self, TokenFileError> {
        let set = TokenSet::default();
        let (entries, mut mtime) = read(&path, kind)?;
        set.replace(entries);
        let s = set.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let m = modified(&path);
                if m != mtime {
                    match read(&path, kind) {
                        Ok((t, m2)) => {
                            tracing::info!(tokens = t.len(), file = kind.name(), "tokens reloaded");
                            s.replace(t);
                            mtime = m2;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, file = kind.name(), "could not reload tokens; keeping the old ones")
                        }
                    }
                }
            }
        });
        Ok(set)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The entries and the mtime they correspond to. The mtime is taken *before* the contents:
/// a write landing between the two reads then shows as a newer mtime on the next poll and
/// is read again, instead of being recorded as already seen.
fn read(path: &Path, kind: TokenFile) -> Result<(Vec<Entry>, Option<SystemTime>), TokenFileError> {
    read_with(path, kind, || {})
}

/// [`read`], calling `between` after the mtime is taken (tests write the file there).
fn read_with(
    path: &Path,
    kind: TokenFile,
    between: impl FnOnce(),
) -> Result<(Vec<Entry>, Option<SystemTime>), TokenFileError> {
    let mtime = modified(path);
    between();
    let text = std::fs::read_to_string(path)?;
    let entries = parse_as(&text, kind)?
        .into_iter()
        .map(|(t, g)| (digest(&t), g))
        .collect();
    Ok((entries, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(c: &[&str]) -> Grant {
        Grant::Clients(c.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn accepts_only_listed_tokens() {
        let t = TokenSet::from_tokens(["alpha", "beta"]);
        assert!(t.accepts("alpha") && t.accepts("beta"));
        assert!(!t.accepts("alph") && !t.accepts("") && !t.accepts("gamma"));
        assert!(!TokenSet::default().accepts("alpha"));
    }

    #[test]
    fn file_binds_tokens_to_clients() {
        let text = "# tokens\n\
                    plain-token\n\
                    \x20 star-token   *   # the platform\n\
                    one-token dealer-1\n\
                    many-token dealer-1,dealer-2 , dealer-3\n\
                    spaced-token dealer-4, dealer-5\n";
        let parsed = parse(text).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("plain-token".into(), Grant::AnyClient),
                ("star-token".into(), Grant::AnyClient),
                ("one-token".into(), clients(&["dealer-1"])),
                (
                    "many-token".into(),
                    clients(&["dealer-1", "dealer-2", "dealer-3"])
                ),
                ("spaced-token".into(), clients(&["dealer-4", "dealer-5"])),
            ]
        );
        let set = TokenSet::from_grants(parsed.iter().map(|(t, g)| (t.as_str(), g.clone())));
        assert!(set.grant("one-token").unwrap().allows("dealer-1"));
        assert!(!set.grant("one-token").unwrap().allows("dealer-2"));
        assert!(set.grant("plain-token").unwrap().allows("anyone"));
        assert_eq!(set.grant("nope"), None);
    }

    #[test]
    fn ambiguous_lines_refuse_the_file() {
        for (text, line, why) in [
            ("ok\ntok a b\n", 2, "commas"),
            ("tok *,dealer-1\n", 1, "stand alone"),
            ("tok dealer/1\n", 1, "not a clientId"),
            ("tok a\ntok b\n", 2, "twice"),
        ] {
            match parse(text) {
                Err(TokenFileError::Line { line: l, why: w }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert!(w.contains(why), "{text:?}: {w}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn feed_tokens_name_their_clients() {
        let text = "reader-a dealer-1\nplatform-reader *\n";
        assert_eq!(
            parse_as(text, TokenFile::Feed).unwrap(),
            vec![
                ("reader-a".into(), clients(&["dealer-1"])),
                ("platform-reader".into(), Grant::AnyClient),
            ]
        );
        // A bare token reads nothing by accident: the whole file is refused.
        match parse_as("reader-a dealer-1\nbare-token  # oops\n", TokenFile::Feed) {
            Err(TokenFileError::Line { line: 2, why }) => assert!(why.contains("`*`"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse("bare-token\n").unwrap()[0].1, Grant::AnyClient);
    }

    #[test]
    fn a_write_during_a_read_is_never_missed() {
        // A new version written while the file is being read must either be what was read
        // or leave an mtime that differs from the file's, so the next poll reads it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "first\n").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (entries, seen) = read_with(&p, TokenFile::Ingest, || {
            std::fs::write(&p, "second\n").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old + Duration::from_secs(60))
                .unwrap();
        })
        .unwrap();
        let got_second = entries.iter().any(|(d, _)| *d == digest("second"));
        assert!(
            got_second || seen != modified(&p),
            "read the old tokens but recorded the new mtime: the change would be missed"
        );
    }
}
