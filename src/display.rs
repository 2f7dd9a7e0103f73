//! How numbers are shown to people, the same in the server's messages and
//! pages and in the CLI's tables.

/// A number as people read it: at most `places` decimals, no trailing zeros
/// (`0.0010000000000000009` → `0.001`, `12.0` → `12`, never `-0`).
pub fn decimal(x: f64, places: usize) -> String {
    let s = format!("{x:.places$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn rounds_and_drops_trailing_zeros() {
        assert_eq!(decimal(0.0010000000000000009, 6), "0.001");
        assert_eq!(decimal(12.0, 6), "12");
        assert_eq!(decimal(-0.0000001, 6), "0");
        assert_eq!(decimal(0.03, 4), "0.03");
        assert_eq!(decimal(1.23456789, 4), "1.2346");
    }
}
