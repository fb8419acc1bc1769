//! Values made safe for a path segment, and paths that cannot leave `baseDirectory`.

use std::fmt;

use super::{MAX_SEGMENT_BYTES, MAX_VALUE_CHARS};

/// Why FTP path parts cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{part} {path:?} must be relative")]
    Absolute { part: PathPart, path: String },
    #[error("{part} {path:?} must not contain '..' segments")]
    Parent { part: PathPart, path: String },
    #[error("{part} {path:?} must not contain backslashes or control characters")]
    BadCharacter { part: PathPart, path: String },
    #[error("{part} {path:?} has a segment longer than {MAX_SEGMENT_BYTES} bytes")]
    TooLong { part: PathPart, path: String },
    #[error(
        "file name {name:?} must be one non-empty name without '/' (use rules.directory for sub-directories)"
    )]
    BadFileName { name: String },
}

/// Which argument of [`join_path`] a [`PathError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPart {
    Base,
    Directory,
    File,
}

impl fmt::Display for PathPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathPart::Base => "base directory",
            PathPart::Directory => "directory",
            PathPart::File => "file name",
        })
    }
}

impl PathError {
    pub fn part(&self) -> PathPart {
        match self {
            PathError::Absolute { part, .. }
            | PathError::Parent { part, .. }
            | PathError::BadCharacter { part, .. }
            | PathError::TooLong { part, .. } => *part,
            PathError::BadFileName { .. } => PathPart::File,
        }
    }
}

/// Makes a value safe inside one path segment: the values come from dealers' data, so a VIN
/// like `../../etc/passwd` must stay a harmless name. Separators, control characters and
/// characters Windows FTP servers refuse become `_`, runs of dots become `_` (no `..`), a
/// leading dot becomes `_` (no hidden files); the result is trimmed and at most
/// [`MAX_VALUE_CHARS`] characters.
pub fn sanitize(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'.') => {
                while chars.next_if_eq(&'.').is_some() {}
                out.push('_');
            }
            '.' if out.is_empty() => out.push('_'),
            c if c.is_control()
                || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') =>
            {
                out.push('_')
            }
            c => out.push(c),
        }
    }
    let capped: String = out.chars().take(MAX_VALUE_CHARS).collect();
    capped.trim_end().to_owned()
}

/// Joins an FTP base directory (literal, relative to the login directory or absolute), a
/// rendered sub-directory (relative, may hold several segments) and a rendered file name
/// (one segment) with single slashes. Refuses anything that could leave `base`: `..`
/// segments, an absolute `dir`, a file name with a separator, backslashes (Windows servers
/// read them as separators) and control characters.
pub fn join_path(base: &str, dir: &str, file: &str) -> Result<String, PathError> {
    if dir.starts_with('/') {
        return Err(PathError::Absolute {
            part: PathPart::Directory,
            path: dir.to_owned(),
        });
    }
    if file.is_empty() || file.contains('/') || file == "." || file == ".." {
        return Err(PathError::BadFileName {
            name: file.to_owned(),
        });
    }
    let mut segments: Vec<&str> = Vec::new();
    for (part, path) in [
        (PathPart::Base, base),
        (PathPart::Directory, dir),
        (PathPart::File, file),
    ] {
        if path.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::BadCharacter {
                part,
                path: path.to_owned(),
            });
        }
        for seg in path.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    return Err(PathError::Parent {
                        part,
                        path: path.to_owned(),
                    });
                }
                s if s.len() > MAX_SEGMENT_BYTES => {
                    return Err(PathError::TooLong {
                        part,
                        path: path.to_owned(),
                    });
                }
                s => segments.push(s),
            }
        }
    }
    let joined = segments.join("/");
    Ok(if base.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    })
}
