//! Time and numbers as people read them in event details and comments.

/// µs since the epoch as RFC 3339 in UTC (`2026-06-01T12:00:00.250Z`), for
/// the sentences of event details and comments people read.
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{frac:06}").trim_end_matches('0').to_owned()
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

/// A number as people read it (the CLI shows numbers the same way).
pub use modelreg_api::display::decimal;

/// A duration in µs as people write it: `90s`, `2h`, `30d`, `1h30m`.
pub fn human_duration(micros: i64) -> String {
    let mut secs = micros / 1_000_000;
    if secs == 0 {
        return format!("{micros}µs");
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}
