//! `ironclaw sandbox ls`: the sandboxes as a table.

use serde_json::Value;

const HEADERS: [&str; 7] = ["ID", "IMAGE", "AGE", "IDLE", "MEMORY", "STATE", "COMMANDS"];

/// The table of `sandboxes` (the service's `SandboxInfo` objects), or their
/// ids one per line with `quiet`.
pub fn table(sandboxes: &[Value], quiet: bool) -> String {
    if quiet {
        return sandboxes
            .iter()
            .map(|s| format!("{}\n", text(s, "id")))
            .collect();
    }
    let rows: Vec<[String; 7]> = sandboxes.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers = HEADERS.map(String::from);
    for r in std::iter::once(&headers).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn row(s: &Value) -> [String; 7] {
    let num = |k: &str| s[k].as_u64().unwrap_or(0);
    [
        text(s, "id"),
        text(s, "image"),
        ago(num("age_s")),
        ago(num("idle_s")),
        // Guest memory, and what its VM takes on the host now.
        format!("{}M ({}M rss)", num("memory_mib"), num("host_rss_mib")),
        text(s, "state"),
        num("running_commands").to_string(),
    ]
}

/// A field of a JSON object as text, empty when missing.
fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Seconds as `42s`, `5m`, `3h`, `2d`.
fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_and_ids() {
        let s = json!({"id": "sb-1", "image": "default", "age_s": 75, "idle_s": 3,
            "memory_mib": 512, "host_rss_mib": 101, "state": "running", "running_commands": 2});
        let t = table(std::slice::from_ref(&s), false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID    IMAGE    AGE  IDLE  MEMORY"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("sb-1  default  1m   3s    512M (101M rss)  running"),
            "{t}"
        );
        assert!(lines[1].ends_with(" 2"), "{t}");
        assert_eq!(table(&[s], true), "sb-1\n");
        assert_eq!(table(&[], true), "");
    }
}
