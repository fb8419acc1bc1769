//! Tables as kubectl prints them: upper-case headers, columns padded, `<none>` for nothing.

use serde_json::Value;

use crate::args::Output;

pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// `v` at a JSON pointer, as text (`<none>` when absent or null).
fn at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "<none>".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// The receiver's answer on one line: HTTP status or FTP reply.
fn answer_of(d: &Value) -> String {
    match (d.pointer("/httpStatus"), d.pointer("/ftpReply")) {
        (Some(Value::Number(n)), _) => n.to_string(),
        (_, Some(Value::String(r))) => r.clone(),
        (_, Some(r @ Value::Object(_))) => format!("{} {}", at(r, "/code"), at(r, "/text")),
        _ => "<none>".to_string(),
    }
}

fn target_of(d: &Value) -> String {
    format!(
        "{}/{}/{}",
        at(d, "/target/kind"),
        at(d, "/target/namespace"),
        at(d, "/target/name")
    )
}

pub fn deliveries(items: &[Value]) {
    if items.is_empty() {
        println!("No deliveries found.");
        return;
    }
    let rows = items
        .iter()
        .map(|d| {
            vec![
                at(d, "/id"),
                at(d, "/at"),
                target_of(d),
                at(d, "/event/id"),
                at(d, "/event/type"),
                at(d, "/event/vehicle"),
                at(d, "/event/vin"),
                at(d, "/attempt"),
                at(d, "/result"),
                answer_of(d),
                format!("{}ms", at(d, "/durationMs")),
                at(d, "/reason"),
            ]
        })
        .collect();
    table(
        &[
            "ID", "AT", "TARGET", "EVENT", "TYPE", "VEHICLE", "VIN", "ATTEMPT", "RESULT", "ANSWER",
            "DURATION", "REASON",
        ],
        rows,
    );
}

pub fn event(e: &Value) {
    println!("Event:    {}", at(e, "/id"));
    println!("Client:   {}", at(e, "/client"));
    println!("Type:     {}", at(e, "/event/type"));
    println!("Accepted: {}", at(e, "/accepted"));
    let targets = e
        .get("targets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if targets.is_empty() {
        println!("No deliveries.");
        return;
    }
    for t in &targets {
        println!();
        println!(
            "Target:   {}/{}/{}{}",
            at(t, "/target/kind"),
            at(t, "/target/namespace"),
            at(t, "/target/name"),
            if t.get("pending").and_then(Value::as_bool) == Some(true) {
                "   (still pending)"
            } else {
                ""
            }
        );
        let attempts = t
            .get("attempts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rows = attempts
            .iter()
            .map(|d| {
                vec![
                    at(d, "/id"),
                    at(d, "/at"),
                    at(d, "/attempt"),
                    at(d, "/result"),
                    answer_of(d),
                    at(d, "/reason"),
                    at(d, "/response"),
                ]
            })
            .collect();
        table(
            &[
                "ID", "AT", "ATTEMPT", "RESULT", "ANSWER", "REASON", "RESPONSE",
            ],
            rows,
        );
    }
}

pub fn targets(v: &Value) {
    let items = v
        .get("items")
        .or(Some(v))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        println!("No targets found.");
        return;
    }
    let rows = items
        .iter()
        .map(|t| {
            vec![
                format!(
                    "{}/{}/{}",
                    at(t, "/kind"),
                    at(t, "/namespace"),
                    at(t, "/name")
                ),
                at(t, "/client"),
                at(t, "/ready"),
                at(t, "/delivering"),
                at(t, "/counters/delivered"),
                at(t, "/counters/failed"),
                at(t, "/counters/pending"),
            ]
        })
        .collect();
    table(
        &[
            "TARGET",
            "CLIENT",
            "READY",
            "DELIVERING",
            "DELIVERED",
            "FAILED",
            "PENDING",
        ],
        rows,
    );
}

pub fn test(a: &Value) {
    println!("Result:   {}", at(a, "/result"));
    println!("Answer:   {}", answer_of(a));
    println!("Duration: {}ms", at(a, "/durationMs"));
    if a.get("reason").is_some_and(|r| !r.is_null()) {
        println!("Reason:   {}", at(a, "/reason"));
        println!("Message:  {}", at(a, "/message"));
    }
    if a.get("response").is_some_and(|r| !r.is_null()) {
        println!("Response: {}", at(a, "/response"));
    }
}

/// A 202 answer of a retry, redelivery or replay.
pub fn answer(out: Output, v: &Value, what: &str) {
    match out {
        Output::Json => json(v),
        Output::Table => match v.get("queued") {
            Some(n) => println!("{what}: {n} deliveries"),
            None => println!("{what}: {v}"),
        },
    }
}
