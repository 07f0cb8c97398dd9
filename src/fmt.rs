//! Number formatting for reports: thousands separators, binary byte units, SI prefixes.

/// `1215064704` → `1,215,064,704`.
pub use zambac_engine::resources::group as count;

/// Bytes with a binary unit: `196608` → `192.0 KiB` (the runtime reports memory the same way).
pub use zambac_runtime::bench::human_bytes as bytes;

/// A quantity with an SI prefix: `2.43e9` → `2.43 G`.
pub fn si(x: f64) -> String {
    const PREFIXES: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut v = x;
    let mut p = 0;
    while v.abs() >= 1000.0 && p + 1 < PREFIXES.len() {
        v /= 1000.0;
        p += 1;
    }
    format!("{v:.2} {}", PREFIXES.get(p).unwrap_or(&"P"))
        .trim_end()
        .to_string()
}

/// A duration with a unit that keeps three significant digits: `0.0000406` → `40.6 µs`.
pub fn duration(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(1215064704), "1,215,064,704");
        assert_eq!(count(999), "999");
        assert_eq!(bytes(196608), "192.0 KiB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(si(2.43e9), "2.43 G");
        assert_eq!(si(12.0), "12.00");
    }
}
