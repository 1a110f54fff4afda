//! Small helpers for writing SVG by hand: escaping, number formatting,
//! axis ticks.

use std::fmt::Write as _;

/// `s` with the five XML special characters escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot hold at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate with at most one decimal (keeps files small).
pub fn n(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Evenly spaced "nice" tick values (1, 2 or 5 × 10^k apart) from 0 to at
/// least `max`, about `want` of them.
pub fn nice_ticks(max: f64, want: usize) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let count = (max / step).ceil() as usize;
    (0..=count.max(1)).map(|i| i as f64 * step).collect()
}

/// Tick positions for a byte axis: powers of two (KiB, MiB, GiB …) apart.
pub fn byte_ticks(max: u64, want: usize) -> Vec<u64> {
    let raw = (max / want.max(1) as u64).max(1);
    let step = raw.next_power_of_two();
    // Steps of 2^k or 2^k × 5/4 would look odd; powers of two keep labels
    // like 512 MiB, 1 GiB, 1.5 GiB.
    let count = max.div_ceil(step);
    (0..=count).map(|i| i.saturating_mul(step)).collect()
}

/// A tick label: `0`, `250`, `1.5k`, `2M`, `0.05`.
pub fn num_label(v: f64) -> String {
    let a = v.abs();
    let (v, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mut s = format!("{v:.3}");
    while s.contains('.') && (s.ends_with('0') || s.ends_with('.')) {
        s.pop();
    }
    s + suffix
}

/// A time label in seconds: `0`, `2.5`, `120`.
pub fn time_label(s: f64) -> String {
    num_label(s)
}

/// A duration label: `1µs`, `10ms`, `1s`.
pub fn latency_label(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{}s", num_label(ns / 1e9))
    } else if ns >= 1e6 {
        format!("{}ms", num_label(ns / 1e6))
    } else if ns >= 1e3 {
        format!("{}µs", num_label(ns / 1e3))
    } else {
        format!("{}ns", num_label(ns))
    }
}

/// Appends `<text>`.
pub fn text(out: &mut String, x: f64, y: f64, anchor: &str, extra: &str, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="{anchor}"{extra}>{}</text>"#,
        n(x),
        n(y),
        esc(s)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(esc("x\u{1}y"), "x?y");
        assert_eq!(n(1.04), "1");
        assert_eq!(n(2.25), "2.3");
        assert_eq!(n(f64::NAN), "0");
        assert_eq!(nice_ticks(9.0, 4), [0.0, 5.0, 10.0]);
        assert_eq!(nice_ticks(9.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 4), [0.0, 1.0]);
        assert_eq!(byte_ticks(5 << 30, 4), [0, 2 << 30, 4 << 30, 6 << 30]);
        assert_eq!(num_label(1500.0), "1500");
        assert_eq!(num_label(25000.0), "25k");
        assert_eq!(num_label(0.05), "0.05");
        assert_eq!(latency_label(1e4), "10µs");
        assert_eq!(latency_label(2.5e9), "2.5s");
    }
}
