//! Non-printable characters made visible, for everything a person reads: the CLI's tables and
//! the daemon's log lines (hook output included), as `ls` and `systemctl` do.
//!
//! Model ids are checked at every entry, but tables and logs also carry policy names, notes,
//! hook output and error texts. A control character written raw could set a terminal's title,
//! clear the screen, or (CR, LF) forge a table row or a log line at another priority.
//!
//! Escaped: the C0 controls and DEL (`\n`, `\r`, `\t` by name, the rest as `\xNN`), the C1
//! controls, and the Unicode line separators and bidirectional overrides (as `\u{NNNN}`),
//! which reorder or break what is displayed. Everything else, including `\` itself, is
//! written as it is.

use std::borrow::Cow;

/// `s` with every non-printable character escaped; borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, None)
}

/// [`escape`], but `keep` is written as it is (a log message's own line breaks).
pub fn escape_except(s: &str, keep: Option<char>) -> Cow<'_, str> {
    if !s.chars().any(|c| Some(c) != keep && hidden(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if Some(c) == keep || !hidden(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 6 of the security review: what a hostile id or hook line could do to a terminal.
    #[test]
    fn finding_6_control_characters_are_shown_escaped() {
        assert!(matches!(escape("fraud-v3 ok/é"), Cow::Borrowed(_)));
        assert_eq!(
            escape("\u{1b}]0;pwned\u{7}\u{1b}[2J"),
            "\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(escape("a\rb\nc\td\0e\u{7f}"), "a\\rb\\nc\\td\\x00e\\x7f");
        assert_eq!(
            escape("x\u{85}y\u{202e}z\u{2028}"),
            "x\\u{0085}y\\u{202e}z\\u{2028}"
        );
        assert_eq!(escape("C:\\path"), "C:\\path", "backslashes stay");
        assert_eq!(escape_except("two\nlines\r", Some('\n')), "two\nlines\\r");
    }
}
