//! Durations as people type them on the command line, shared by the
//! server's flags (`--heartbeat-interval 10s`) and the `modelreg` CLI
//! (`--timeout 10m`, a live rule's window).
//!
//! The syntax is [`humantime`]'s (`250ms`, `10s`, `5m`, `1h 30m`, `1.5s`),
//! plus a bare number, which counts seconds (`2` is two seconds).

use std::time::Duration;

/// The longest duration [`parse`] accepts: one day.
pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration between 1ms and 24h: `250ms`, `10s`, `5m`, `1h 30m`,
/// or a bare number of seconds. Zero is refused, as is anything longer
/// than [`MAX`].
pub fn parse(raw: &str) -> Result<Duration, String> {
    parse_at_most(raw, MAX)
}

/// [`parse`] with another upper bound, for a value whose range the server
/// checks (a live rule's window may span days).
pub fn parse_at_most(raw: &str, max: Duration) -> Result<Duration, String> {
    let raw = raw.trim();
    let bare_seconds = !raw.is_empty() && raw.chars().all(|c| c.is_ascii_digit() || c == '.');
    let parsed = if bare_seconds {
        humantime::parse_duration(&format!("{raw}s"))
    } else {
        humantime::parse_duration(raw)
    };
    let d = parsed.map_err(|e| format!("{raw:?} is not a duration like 10s or 500ms ({e})"))?;
    if d < Duration::from_millis(1) || d > max {
        let max = humantime::format_duration(max);
        return Err(format!("{raw:?} must be between 1ms and {max}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("24h").unwrap(), MAX);
        assert_eq!(parse(" 1.5s ").unwrap(), Duration::from_millis(1500));
        assert!(parse("0s").is_err());
        assert!(parse("ten").is_err());
        assert!(parse("10x").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse("0").is_err());
        assert!(parse(".").is_err());
    }

    #[test]
    fn zero_and_more_than_a_day_are_refused_with_the_bounds() {
        assert_eq!(
            parse("0s").unwrap_err(),
            "\"0s\" must be between 1ms and 1day"
        );
        assert!(parse("25h").unwrap_err().contains("between 1ms and 1day"));
        assert!(parse("100us").is_err());
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(parse_at_most("2days", week).unwrap(), 2 * MAX);
        assert!(parse_at_most("8days", week).is_err());
    }
}
