//! Values kept from a response (`capture`): ids the following requests and events of the
//! vehicle use as `remote.<name>`.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::api::apiconnection::Capture;

/// Longest value kept: ids and tokens, not documents.
pub const MAX_CAPTURE_BYTES: usize = 1024;

/// A capture that found nothing: the API did not answer as the mapping says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capture {capture:?}: {message}")]
pub struct CaptureError {
    pub capture: String,
    pub message: String,
}

/// Every capture of a request from its response. `jsonPointer` takes a string (as is) or a
/// number (its text) from a JSON body; `header` the header's value, with `lastSegment` only
/// the part after its last `/` (query and a trailing `/` ignored, percent-decoded so that
/// the path encoding gives it back as sent). Empty or missing is an error.
pub fn capture(
    captures: &BTreeMap<String, Capture>,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<BTreeMap<String, String>, CaptureError> {
    let mut json: Option<serde_json::Value> = None;
    let mut out = BTreeMap::new();
    for (name, c) in captures {
        let fail = |message: String| CaptureError {
            capture: name.clone(),
            message,
        };
        let value = if let Some(pointer) = &c.json_pointer {
            if json.is_none() {
                let parsed = serde_json::from_slice(body).map_err(|e| {
                    fail(format!(
                        "the response ({status}) is not JSON ({e}), so {pointer:?} finds nothing"
                    ))
                })?;
                json = Some(parsed);
            }
            let found = json.as_ref().and_then(|j| j.pointer(pointer));
            match found {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(other) => {
                    let what = match other {
                        serde_json::Value::Null => "null",
                        serde_json::Value::Bool(_) => "a boolean",
                        serde_json::Value::Array(_) => "an array",
                        _ => "an object",
                    };
                    return Err(fail(format!(
                        "{pointer:?} in the response ({status}) is {what}, not a string or number"
                    )));
                }
                None => {
                    return Err(fail(format!(
                        "the response ({status}) has nothing at {pointer:?}"
                    )));
                }
            }
        } else if let Some(header) = &c.header {
            let raw = headers
                .get(header.as_str())
                .ok_or_else(|| fail(format!("the response ({status}) has no {header} header")))?;
            let text = raw
                .to_str()
                .map_err(|_| fail(format!("the {header} header is not ASCII text")))?;
            if c.last_segment {
                last_segment(text).ok_or_else(|| {
                    fail(format!(
                        "the {header} header {text:?} has no last path segment"
                    ))
                })?
            } else {
                text.trim().to_owned()
            }
        } else {
            return Err(fail("names neither jsonPointer nor header".into()));
        };
        if value.is_empty() {
            return Err(fail(format!(
                "the response ({status}) gives an empty value"
            )));
        }
        if value.len() > MAX_CAPTURE_BYTES {
            return Err(fail(format!(
                "the value is longer than {MAX_CAPTURE_BYTES} bytes"
            )));
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// `https://api/v1/vehicles/abc%20d/?x=1` → `abc d`.
fn last_segment(text: &str) -> Option<String> {
    let path = text.trim().split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    // `https://host` alone has no path to take an id from.
    if let Some((_, authority_and_path)) = path.split_once("://")
        && !authority_and_path.contains('/')
    {
        return None;
    }
    let segment = path.rsplit('/').next().filter(|s| !s.is_empty())?;
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}
