//! Accepted bearer tokens, from a file with one token a line (blank lines and `#` comments
//! ignored). Kept as SHA-256 digests; the file is re-read when it changes, so a rotated
//! Secret takes effect without a restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Arc<RwLock<Vec<[u8; 32]>>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenSet {
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let set = TokenSet::default();
        set.replace(tokens.into_iter().map(digest).collect());
        set
    }

    fn replace(&self, d: Vec<[u8; 32]>) {
        if let Ok(mut g) = self.digests.write() {
            *g = d;
        }
    }

    pub fn len(&self) -> usize {
        self.digests.read().map(|d| d.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compares digests in full (no early exit) so timing does not reveal prefixes.
    pub fn accepts(&self, token: &str) -> bool {
        let d = digest(token);
        let Ok(list) = self.digests.read() else {
            return false;
        };
        list.iter().fold(false, |hit, t| {
            hit | (t
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0)
        })
    }

    /// Loads `path` and keeps reloading it (every few seconds when its mtime changes).
    pub fn watch_file(path: PathBuf) -> std::io::Result<Self> {
        let set = TokenSet::default();
        let (tokens, mut mtime) = read(&path)?;
        set.replace(tokens);
        let s = set.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let m = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                if m != mtime {
                    match read(&path) {
                        Ok((t, m2)) => {
                            tracing::info!(tokens = t.len(), "ingest tokens reloaded");
                            s.replace(t);
                            mtime = m2;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not reload ingest tokens; keeping the old ones")
                        }
                    }
                }
            }
        });
        Ok(set)
    }
}

fn read(path: &PathBuf) -> std::io::Result<(Vec<[u8; 32]>, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path)?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let tokens = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(digest)
        .collect();
    Ok((tokens, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_listed_tokens() {
        let t = TokenSet::from_tokens(["alpha", "beta"]);
        assert!(t.accepts("alpha") && t.accepts("beta"));
        assert!(!t.accepts("alph") && !t.accepts("") && !t.accepts("gamma"));
        assert!(!TokenSet::default().accepts("alpha"));
    }
}
