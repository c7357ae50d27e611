//! Honest decoding of text bytes and whitespace/Unicode normalization.
//!
//! Invariant: bytes are never silently mangled: a BOM decides, valid UTF-8 is taken as is,
//! anything else is decoded by a documented rule and the document is flagged.

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use unicode_normalization::UnicodeNormalization;

use super::ExtractError;

/// How far into a file to look for NUL bytes that betray binary content.
const BINARY_SNIFF_BYTES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub encoding: &'static str,
    pub warning: Option<String>,
}

/// Decodes a text file: BOM (UTF-8/UTF-16) first, then UTF-8; bytes that are not UTF-8 are
/// decoded as windows-1252 when they contain no valid multi-byte UTF-8 at all (a legacy
/// 8-bit file), otherwise as UTF-8 with U+FFFD replacements. Both cases are flagged.
pub fn decode_text(bytes: &[u8]) -> Result<Decoded, ExtractError> {
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        return Ok(decode_with(encoding, &bytes[bom_len..]));
    }
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Err(ExtractError::Invalid(
            "binary content (NUL bytes) in a file named as text; exclude it or give it its real extension".into(),
        ));
    }
    decode_undeclared(bytes)
}

/// Decodes bytes whose encoding nobody declared (see [`decode_text`]).
pub(super) fn decode_undeclared(bytes: &[u8]) -> Result<Decoded, ExtractError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(Decoded {
            text: text.to_string(),
            encoding: UTF_8.name(),
            warning: None,
        });
    }
    let (mut multibyte_chars, mut invalid_bytes) = (0usize, 0usize);
    for chunk in bytes.utf8_chunks() {
        multibyte_chars += chunk.valid().chars().filter(|c| !c.is_ascii()).count();
        invalid_bytes += chunk.invalid().len();
    }
    if multibyte_chars == 0 {
        let (text, _, _) = WINDOWS_1252.decode(bytes);
        let text = text.into_owned();
        reject_control_heavy(&text)?;
        return Ok(Decoded {
            text,
            encoding: WINDOWS_1252.name(),
            warning: Some(format!(
                "not valid UTF-8 ({invalid_bytes} bad bytes) and no encoding declared; decoded as windows-1252 (Latin-1)"
            )),
        });
    }
    let text = String::from_utf8_lossy(bytes).into_owned();
    Ok(Decoded {
        text,
        encoding: UTF_8.name(),
        warning: Some(format!(
            "invalid UTF-8: {invalid_bytes} bad bytes replaced with U+FFFD"
        )),
    })
}

pub(super) fn decode_with(encoding: &'static Encoding, bytes: &[u8]) -> Decoded {
    let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
    Decoded {
        text: text.into_owned(),
        encoding: encoding.name(),
        warning: had_errors.then(|| {
            format!(
                "malformed {} byte sequences replaced with U+FFFD",
                encoding.name()
            )
        }),
    }
}

/// Text that is mostly control characters is binary with a text extension.
fn reject_control_heavy(text: &str) -> Result<(), ExtractError> {
    let total = text.chars().count().max(1);
    let control = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c'))
        .count();
    if control * 10 > total {
        return Err(ExtractError::Invalid(format!(
            "binary content ({control} of {total} characters are control codes) in a file named as text; exclude it or give it its real extension"
        )));
    }
    Ok(())
}

/// NFC, `\n` line endings, no control characters, no trailing spaces, at most one blank
/// line in a row. With `collapse_inline`, runs of spaces and tabs inside a line become one
/// space (prose); without it indentation and alignment are kept (code). Leading
/// indentation is always kept: Markdown and code depend on it.
pub fn normalize(text: &str, collapse_inline: bool) -> String {
    let nfc: String = text.nfc().collect();
    let mut out = String::with_capacity(nfc.len());
    let mut blank_run = 0usize;
    let unified = nfc.replace("\r\n", "\n").replace(['\r', '\x0c'], "\n");
    for line in unified.split('\n') {
        let line: String = line
            .chars()
            .map(|c| match c {
                '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => ' ',
                c => c,
            })
            .filter(|c| *c == '\t' || !c.is_control())
            .filter(|c| !matches!(c, '\u{200b}' | '\u{feff}' | '\u{00ad}'))
            .collect();
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        if collapse_inline {
            let indent_len = line.len() - line.trim_start().len();
            out.push_str(&line[..indent_len]);
            let mut last_space = false;
            for c in line[indent_len..].chars() {
                if c == ' ' || c == '\t' {
                    if !last_space {
                        out.push(' ');
                    }
                    last_space = true;
                } else {
                    out.push(c);
                    last_space = false;
                }
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_taken_as_is() {
        let d = decode_text("héllo wörld".as_bytes()).unwrap();
        assert_eq!(d.text, "héllo wörld");
        assert_eq!(d.warning, None);
    }

    #[test]
    fn utf16_by_bom() {
        let mut bytes = vec![0xFF, 0xFE];
        for unit in "naïve café".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        let d = decode_text(&bytes).unwrap();
        assert_eq!(d.text, "naïve café");
        assert_eq!(d.encoding, "UTF-16LE");
    }

    #[test]
    fn latin1_without_declaration_is_decoded_and_flagged() {
        let d = decode_text(b"caf\xe9 cr\xe8me").unwrap();
        assert_eq!(d.text, "café crème");
        assert!(d.warning.unwrap().contains("windows-1252"));
    }

    #[test]
    fn broken_utf8_is_replaced_and_flagged() {
        let d = decode_text(b"caf\xc3\xa9 and \xff\xfe bad").unwrap();
        assert!(d.text.starts_with("café and "));
        assert!(d.text.contains('\u{fffd}'));
        assert!(d.warning.unwrap().contains("U+FFFD"));
    }

    #[test]
    fn binary_is_refused() {
        let err = decode_text(b"PK\x03\x04\x00\x00binary").unwrap_err();
        assert!(matches!(err, ExtractError::Invalid(m) if m.contains("binary")));
    }

    #[test]
    fn normalize_collapses_whitespace_and_composes() {
        let text = "  Title\r\n\r\n\r\n\r\nsome   text\there \u{a0}x  \n\n\nCafe\u{301}\n";
        assert_eq!(normalize(text, true), "  Title\n\nsome text here x\n\nCafé");
        assert_eq!(normalize("a  =  1\n    b", false), "a  =  1\n    b");
    }
}
