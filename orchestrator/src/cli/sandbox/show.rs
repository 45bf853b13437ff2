//! `ironclaw sandbox ls`: the sandboxes as a table.

use serde_json::Value;

const HEADERS: [&str; 7] = ["ID", "IMAGE", "AGE", "IDLE", "MEMORY", "STATE", "COMMANDS"];

/// The table of `sandboxes` (the service's `SandboxInfo` objects), or their
/// ids one per line with `quiet`.
pub fn table(sandboxes: &[Value], quiet: bool) -> String {
    if quiet {
        return ids(sandboxes);
    }
    let rows: Vec<[String; 7]> = sandboxes.iter().map(row).collect();
    render(&HEADERS, &rows)
}

/// The `id` of each of `items`, one per line.
pub fn ids(items: &[Value]) -> String {
    items
        .iter()
        .map(|s| format!("{}\n", text(s, "id")))
        .collect()
}

/// `rows` under `headers`, each column as wide as its widest cell.
pub fn render<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers = headers.map(String::from);
    for r in std::iter::once(&headers).chain(rows) {
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
        // Guest memory, and what its VM takes on the host now (on disk
        // while paused).
        match s["paused_bytes"].as_u64() {
            Some(bytes) => format!("{}M ({} on disk)", num("memory_mib"), mib(bytes)),
            None => format!("{}M ({}M rss)", num("memory_mib"), num("host_rss_mib")),
        },
        text(s, "state"),
        num("running_commands").to_string(),
    ]
}

/// A field of a JSON object as text, empty when missing.
pub fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Bytes in MiB, rounded up: `1M`, `120M`.
pub fn mib(bytes: u64) -> String {
    format!("{}M", bytes.div_ceil(1 << 20))
}

/// Seconds as `42s`, `5m`, `3h`, `2d`.
pub fn ago(secs: u64) -> String {
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
        let p = json!({"id": "sb-2", "image": "default", "age_s": 7200, "idle_s": 60,
            "memory_mib": 512, "host_rss_mib": 0, "state": "paused", "running_commands": 0,
            "paused_bytes": 150 << 20});
        let t = table(&[p], false);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("sb-2  default  2h   1m    512M (150M on disk)  paused"),
            "{t}"
        );
        assert_eq!(table(&[], true), "");
    }
}
