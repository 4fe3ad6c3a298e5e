//! What the API verbs print for people: aligned tables, ages ("3h ago"), sizes; and the JSON they print with
//! `--json` (one document per run, on stdout).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

/// Prints rows under a header, each column as wide as its widest cell (the last one unpadded).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let n = cells.len();
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Parses the times Dds answers: `yyyy-MM-ddTHH:mm:ssZ` or `yyyy-MM-ddTHH:mmZ`.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    ["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

/// A span as people say it: 45s, 12m, 3h, 2d (the largest unit only; 5d and more in days).
pub fn span(secs: i64) -> String {
    let s = secs.abs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// "3h ago" for a past time, "in 3h" for a future one, relative to `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs >= 0 {
        format!("{} ago", span(secs))
    } else {
        format!("in {}", span(secs))
    }
}

/// [`relative`] of a Dds time string; "-" when empty, the string itself when unparseable.
pub fn relative_str(s: &str, now: DateTime<Utc>) -> String {
    if s.is_empty() {
        return "-".into();
    }
    parse_time(s).map_or_else(|| s.to_string(), |t| relative(t, now))
}

/// Bytes as B, KiB, MiB, GiB, TiB with one decimal.
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints one JSON document (pretty: people read it too; tools parse it the same).
pub fn json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// "-" for an empty cell.
pub fn dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = render_table(
            &["ID", "STATUS", "AGE"],
            &[
                vec!["1".into(), "Success".into(), "3h ago".into()],
                vec!["12345".into(), "Failed".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "ID     STATUS   AGE\n1      Success  3h ago\n12345  Failed   -\n"
        );
    }

    #[test]
    fn ages_and_sizes() {
        let now = parse_time("2026-01-02T12:00:00Z").unwrap();
        assert_eq!(relative_str("2026-01-02T11:59:15Z", now), "45s ago");
        assert_eq!(relative_str("2026-01-02T09:00:00Z", now), "3h ago");
        assert_eq!(relative_str("2025-12-30T12:00:00Z", now), "3d ago");
        assert_eq!(relative_str("2026-01-02T12:30Z", now), "in 30m");
        assert_eq!(relative_str("", now), "-");
        assert_eq!(relative_str("garbage", now), "garbage");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
