//! Text from the registry made safe to show on a terminal. Comments,
//! descriptions, names of people and metrics, and server messages may hold
//! ESC, CR, BEL and other control characters (stored before the server
//! refused them, or sent by a server that does not); printed raw they could
//! move the cursor, rewrite earlier lines, set the window title or hide text.
//! Every human-readable line the `modelreg` CLI prints goes through
//! [`printable`]; `--json` output is left to the JSON encoder.

use std::borrow::Cow;

/// `text` with every character that is not printable written as an escape:
/// `\n`, `\t` and `\r` for those three, `\u{1b}` (hex) for every other C0 or
/// C1 control, DEL, and the invisible format characters that reorder or hide
/// text (bidirectional overrides and isolates, zero-width characters, line
/// and paragraph separators, soft hyphen, byte-order mark). Everything else,
/// including any other Unicode and the backslash itself, is kept as it is,
/// so the result never holds a character that acts on the terminal and a
/// table cell stays on one line.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` acts on a terminal or is invisible instead of being shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Terminal escapes stored in a comment or description (colour, cursor
    /// movement, a rewritten window title, a carriage return that overwrites
    /// the line, a bell, a C1 CSI, a right-to-left override) come out as
    /// visible escapes: not one control character reaches the terminal.
    #[test]
    fn terminal_escapes_in_stored_text_are_shown_not_executed() {
        let hostile =
            "ok\u{1b}[31mred\u{1b}[2J\u{1b}]0;pwned\u{7}\rhidden\u{9b}1A\u{202e}txt.exe\u{0}\u{7f}";
        let shown = printable(hostile);
        assert_eq!(
            shown,
            "ok\\u{1b}[31mred\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\rhidden\\u{9b}1A\\u{202e}txt.exe\\u{0}\\u{7f}"
        );
        assert!(!shown.chars().any(needs_escape), "{shown:?}");
    }

    /// Newline and tab are shown escaped too, so a table cell or a
    /// `key  value` line never breaks or shifts.
    #[test]
    fn newlines_and_tabs_stay_on_one_line() {
        assert_eq!(printable("line one\nline\ttwo"), "line one\\nline\\ttwo");
    }

    /// Ordinary text, any script, is unchanged (and not copied).
    #[test]
    fn printable_text_is_kept_as_it_is() {
        for text in [
            "",
            "fraud-model",
            "a \\ b",
            "Grüße, 数据, émoji 🚀",
            "“quoted”",
        ] {
            assert!(matches!(printable(text), Cow::Borrowed(t) if t == text));
        }
    }
}
