//! Honest decoding of text bytes and whitespace/Unicode normalization.
//!
//! Invariant: bytes are never silently mangled: a BOM or a declaration decides, valid
//! UTF-8 is taken as is, UTF-16/32 is recognised by its byte pattern, and any other
//! guess (chardetng, the detector Firefox uses) is named in the document's warning.

use chardetng::{EncodingDetector, Iso2022JpDetection, Utf8Detection};
use encoding_rs::{Encoding, UTF_16BE, UTF_16LE, UTF_8};
use unicode_normalization::UnicodeNormalization;

use super::ExtractError;

/// How far into a file to look for NUL bytes that betray binary content, and for the
/// byte pattern of UTF-16/32 without a BOM.
const BINARY_SNIFF_BYTES: usize = 8192;

/// How many bytes chardetng reads: its guess settles long before, and a huge file must
/// not be scanned twice.
const DETECT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub encoding: &'static str,
    pub warning: Option<String>,
}

/// Decodes a text file: a BOM (UTF-8/16/32), then an XML encoding declaration, then the
/// undeclared rules of [`decode_undeclared`].
pub fn decode_text(bytes: &[u8]) -> Result<Decoded, ExtractError> {
    if let Some(decoded) = decode_by_bom(bytes) {
        return Ok(decoded);
    }
    if let Some(decoded) = xml_declared_label(bytes).and_then(|label| decode_declared(label, bytes))
    {
        return Ok(decoded);
    }
    decode_undeclared(bytes)
}

/// Decodes by a byte-order mark, UTF-32's included (whose little-endian BOM starts with
/// UTF-16's).
pub(super) fn decode_by_bom(bytes: &[u8]) -> Option<Decoded> {
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE, 0, 0]) {
        return Some(decode_utf32(rest, false));
    }
    if let Some(rest) = bytes.strip_prefix(&[0, 0, 0xFE, 0xFF]) {
        return Some(decode_utf32(rest, true));
    }
    Encoding::for_bom(bytes).map(|(encoding, bom_len)| decode_with(encoding, &bytes[bom_len..]))
}

/// The label an `<?xml ... encoding="..."?>` declaration names, if the file opens with one.
pub(super) fn xml_declared_label(bytes: &[u8]) -> Option<&[u8]> {
    let head = &bytes[..bytes.len().min(256)];
    let decl_end = head.windows(2).position(|w| w == b"?>")?;
    let decl = head
        .strip_prefix(b"<?xml")?
        .get(..decl_end.checked_sub(5)?)?;
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = &decl[at + 8..];
    let rest = &rest[rest.iter().position(|b| *b == b'=')? + 1..];
    let rest = rest.trim_ascii_start();
    let quote = *rest.first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    Some(&rest[1..1 + rest[1..].iter().position(|b| *b == quote)?])
}

/// Decodes by a declared label: the Encoding Standard's labels, the common aliases it
/// lacks (`MacCyrillic`, `MacRoman`), and the DOS code pages 437, 850 and 855 that old
/// files declare. `None` for a label nobody knows (detection decides then) and for UTF-16
/// (moot without a BOM: the byte pattern decides).
pub(super) fn decode_declared(label: &[u8], bytes: &[u8]) -> Option<Decoded> {
    let lower = String::from_utf8_lossy(label).trim().to_ascii_lowercase();
    let dos = match lower.as_str() {
        "ibm855" | "cp855" | "855" | "csibm855" => Some(("IBM855", CP855)),
        "ibm437" | "cp437" | "437" | "cspc8codepage437" => Some(("IBM437", CP437)),
        "ibm850" | "cp850" | "850" | "cspc850multilingual" => Some(("IBM850", CP850)),
        _ => None,
    };
    if let Some((name, high)) = dos {
        let high: Vec<char> = high.chars().collect();
        let text = bytes
            .iter()
            .map(|b| {
                if *b < 0x80 {
                    *b as char
                } else {
                    high[(*b - 0x80) as usize]
                }
            })
            .collect();
        return Some(Decoded {
            text,
            encoding: name,
            warning: None,
        });
    }
    let encoding = match lower.as_str() {
        "maccyrillic" | "mac-cyrillic" | "mac_cyrillic" => encoding_rs::X_MAC_CYRILLIC,
        "macroman" | "mac-roman" | "mac_roman" => encoding_rs::MACINTOSH,
        "cp949" | "ms949" | "uhc" => encoding_rs::EUC_KR,
        _ => Encoding::for_label(lower.as_bytes())?,
    };
    if encoding == UTF_16LE || encoding == UTF_16BE || encoding == encoding_rs::REPLACEMENT {
        return None;
    }
    Some(decode_with(encoding, bytes))
}

/// The upper halves of the DOS code pages (bytes 0x80..=0xFF), from their published tables.
const CP855: &str = "ђЂѓЃёЁєЄѕЅіІїЇјЈљЉњЊћЋќЌўЎџЏюЮъЪаАбБцЦдДеЕфФгГ«»░▒▓│┤хХиИ╣║╗╝йЙ┐└┴┬├─┼кК╚╔╩╦╠═╬¤лЛмМнНоОп┘┌█▄Пя▀ЯрРсСтТуУжЖвВьЬ№\u{ad}ыЫзЗшШэЭщЩчЧ§■\u{a0}";
const CP437: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";
const CP850: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u{ad}±‗¾¶§÷¸°¨·¹³²■\u{a0}";

/// Decodes bytes whose encoding nobody declared: UTF-16/32 by their pattern of zero bytes,
/// binary refused, valid UTF-8 as is, mostly-UTF-8 with a few bad bytes as UTF-8 with
/// U+FFFD (flagged), and anything else by chardetng's guess (flagged, with the guess and
/// its confidence).
pub(super) fn decode_undeclared(bytes: &[u8]) -> Result<Decoded, ExtractError> {
    let head = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES)];
    if head.contains(&0) {
        if let Some(decoded) = detect_wide_unicode(bytes) {
            return Ok(decoded);
        }
        return Err(ExtractError::Invalid(
            "binary content (NUL bytes) in a file named as text; exclude it or give it its real extension".into(),
        ));
    }
    if let Some(decoded) = decode_iso_2022_jp(bytes) {
        return Ok(decoded);
    }
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
    // Legacy encodings form valid UTF-8 sequences only by accident: single-byte code pages
    // almost never, CJK double-byte ones for about one character in twelve against nearly
    // two bad bytes per character. Valid sequences at least half as many as bad bytes mean
    // UTF-8 with damage.
    if 2 * multibyte_chars >= invalid_bytes {
        return Ok(Decoded {
            text: String::from_utf8_lossy(bytes).into_owned(),
            encoding: UTF_8.name(),
            warning: Some(format!(
                "invalid UTF-8: {invalid_bytes} bad bytes replaced with U+FFFD"
            )),
        });
    }
    let guess = guess_legacy(bytes);
    let (text, _, had_errors) = guess.encoding.decode(bytes);
    let text = text.into_owned();
    reject_control_heavy(&text)?;
    let mut warning = format!(
        "not UTF-8 and no encoding declared; detected {} (chardetng; confidence {:.2}, the share of its non-ASCII characters that are letters of one script)",
        guess.encoding.name(),
        guess.confidence,
    );
    if had_errors {
        warning.push_str("; some bytes are invalid in it and were replaced with U+FFFD");
    }
    Ok(Decoded {
        text,
        encoding: guess.encoding.name(),
        warning: Some(warning),
    })
}

/// ISO-2022-JP is 7-bit and so valid UTF-8: it is told by its escape sequences (ESC $ B,
/// ESC $ @ into JIS X 0208), and taken only when it decodes without errors.
fn decode_iso_2022_jp(bytes: &[u8]) -> Option<Decoded> {
    let escapes = bytes
        .windows(3)
        .filter(|w| w[0] == 0x1B && w[1] == b'$' && matches!(w[2], b'B' | b'@'))
        .count();
    if escapes == 0 {
        return None;
    }
    let text = encoding_rs::ISO_2022_JP
        .decode_without_bom_handling_and_without_replacement(bytes)?
        .into_owned();
    Some(Decoded {
        text,
        encoding: encoding_rs::ISO_2022_JP.name(),
        warning: Some(format!(
            "no encoding declared; recognised as ISO-2022-JP by its {escapes} escape sequences"
        )),
    })
}

/// chardetng's guess for bytes known not to be UTF-8, with a plausibility figure.
struct LegacyGuess {
    encoding: &'static Encoding,
    /// The share of the decoded text's non-ASCII characters (punctuation and symbols
    /// aside) that are letters of its most common script: near 1 for a right guess, lower
    /// when a wrong code page mixes accented Latin, symbols and other scripts.
    confidence: f64,
}

fn guess_legacy(bytes: &[u8]) -> LegacyGuess {
    let mut detector = EncodingDetector::new(Iso2022JpDetection::Allow);
    let sample = &bytes[..bytes.len().min(DETECT_BYTES)];
    detector.feed(sample, sample.len() == bytes.len());
    let encoding = detector.guess(None, Utf8Detection::Deny);
    let (decoded, _, _) = encoding.decode(sample);
    LegacyGuess {
        encoding,
        confidence: script_consistency(&decoded),
    }
}

/// See [`LegacyGuess::confidence`].
fn script_consistency(text: &str) -> f64 {
    let mut buckets = [0usize; 9];
    let mut counted = 0usize;
    for c in text.chars().filter(|c| !c.is_ascii()) {
        let cp = c as u32;
        // General punctuation, currency, symbols and CJK punctuation say nothing either way.
        if matches!(cp, 0x2000..=0x2BFF | 0x3000..=0x303F | 0xFF00..=0xFF0F | 0xA0..=0xBF | 0xD7 | 0xF7)
        {
            continue;
        }
        counted += 1;
        if !c.is_alphabetic() {
            continue;
        }
        let bucket = match cp {
            0xC0..=0x24F | 0x1E00..=0x1EFF => 0,
            0x370..=0x3FF | 0x1F00..=0x1FFF => 1,
            0x400..=0x52F => 2,
            0x590..=0x5FF => 3,
            0x600..=0x6FF | 0x750..=0x77F | 0xFB50..=0xFEFF => 4,
            0xE00..=0xE7F => 5,
            0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F => 6,
            0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => 7,
            0x3400..=0x9FFF | 0xF900..=0xFAFF => 8,
            _ => continue,
        };
        buckets[bucket] += 1;
    }
    if counted == 0 {
        return 0.0;
    }
    // Japanese mixes kana and kanji: one writing system.
    let japanese = if buckets[6] > 0 {
        buckets[6] + buckets[8]
    } else {
        0
    };
    let best = buckets.iter().copied().max().unwrap_or(0).max(japanese);
    best as f64 / counted as f64
}

/// UTF-32 or UTF-16 without a BOM, told apart from binary by where the zero bytes fall
/// (UTF-32: the top byte of every unit; UTF-16: the high byte of most units, as in Latin,
/// Cyrillic or Greek text) and by decoding strictly to text without stray control codes.
fn detect_wide_unicode(bytes: &[u8]) -> Option<Decoded> {
    let head = &bytes[..bytes.len().min(BINARY_SNIFF_BYTES) & !3];
    if bytes.len().is_multiple_of(4) && head.len() >= 8 {
        for big_endian in [false, true] {
            let top = if big_endian { 0 } else { 3 };
            if head.chunks_exact(4).all(|unit| unit[top] == 0) {
                let decoded = decode_utf32(bytes, big_endian);
                if decoded.warning.is_none() && looks_like_text(&decoded.text) {
                    return Some(flag_bomless(decoded));
                }
            }
        }
    }
    if !bytes.len().is_multiple_of(2) || head.len() < 4 {
        return None;
    }
    let units = head.len() / 2;
    let zero_at = |parity: usize| {
        head.iter()
            .skip(parity)
            .step_by(2)
            .filter(|b| **b == 0)
            .count()
    };
    let (even_zeros, odd_zeros) = (zero_at(0), zero_at(1));
    let encoding = if odd_zeros * 10 >= units * 3 && even_zeros * 20 <= units {
        UTF_16LE
    } else if even_zeros * 10 >= units * 3 && odd_zeros * 20 <= units {
        UTF_16BE
    } else {
        return None;
    };
    let text = encoding
        .decode_without_bom_handling_and_without_replacement(bytes)?
        .into_owned();
    looks_like_text(&text).then(|| {
        flag_bomless(Decoded {
            text,
            encoding: encoding.name(),
            warning: None,
        })
    })
}

fn flag_bomless(decoded: Decoded) -> Decoded {
    Decoded {
        warning: Some(format!(
            "no BOM and no declaration; recognised as {} by its byte pattern",
            decoded.encoding
        )),
        ..decoded
    }
}

/// Few control codes and no NULs: what decoded text looks like and decoded binary does not.
fn looks_like_text(text: &str) -> bool {
    let total = text.chars().count().max(1);
    let control = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c'))
        .count();
    control * 100 <= total
}

/// UTF-32 (not in the Encoding Standard, so not in encoding_rs): invalid units become
/// U+FFFD and are flagged.
fn decode_utf32(bytes: &[u8], big_endian: bool) -> Decoded {
    let mut bad = 0usize;
    let mut text = String::with_capacity(bytes.len() / 4);
    for unit in bytes.chunks(4) {
        let value = match <[u8; 4]>::try_from(unit) {
            Ok(b) if big_endian => u32::from_be_bytes(b),
            Ok(b) => u32::from_le_bytes(b),
            Err(_) => u32::MAX,
        };
        match char::from_u32(value) {
            Some(c) => text.push(c),
            None => {
                bad += 1;
                text.push('\u{fffd}');
            }
        }
    }
    let name = if big_endian { "UTF-32BE" } else { "UTF-32LE" };
    Decoded {
        text,
        encoding: name,
        warning: (bad > 0).then(|| format!("{bad} invalid {name} units replaced with U+FFFD")),
    }
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
        let d = decode_text(b"Le caf\xe9 cr\xe8me est tr\xe8s appr\xe9ci\xe9 \xe0 Paris.").unwrap();
        assert_eq!(d.text, "Le café crème est très apprécié à Paris.");
        let warning = d.warning.unwrap();
        assert!(
            warning.contains("windows-1252") && warning.contains("confidence"),
            "{warning}"
        );
    }

    #[test]
    fn legacy_encodings_are_detected_not_assumed() {
        for (encoding, text) in [
            (encoding_rs::WINDOWS_1251, "Съешь же ещё этих мягких французских булок, да выпей чаю."),
            (encoding_rs::KOI8_U, "Широкая электрификация южных губерний даст мощный толчок подъёму сельского хозяйства."),
            (encoding_rs::SHIFT_JIS, "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"),
            (encoding_rs::EUC_KR, "다람쥐 헌 쳇바퀴에 타고파. 한국어 문장을 검색합니다."),
            (encoding_rs::BIG5, "這是一個繁體中文的句子，用來測試編碼的偵測。"),
            (encoding_rs::GBK, "这是一个简体中文的句子，用来测试编码的检测。"),
            (encoding_rs::ISO_8859_7, "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Ελληνικό κείμενο."),
        ] {
            let (bytes, _, _) = encoding.encode(text);
            let d = decode_text(&bytes).unwrap();
            assert_eq!(d.text, text, "{}", encoding.name());
            // A superset that decodes the same text (windows-1253 for ISO-8859-7) is right.
            let warning = d.warning.unwrap();
            assert!(warning.contains("detected") && warning.contains("confidence 1.00"), "{warning}");
        }
    }

    #[test]
    fn utf16_and_utf32_without_bom_by_byte_pattern() {
        let text = "Plain text, naïve café, Привет мир.\n";
        let le16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let le32: Vec<u8> = text
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        let be32: Vec<u8> = text
            .chars()
            .flat_map(|c| (c as u32).to_be_bytes())
            .collect();
        for (bytes, name) in [
            (le16, "UTF-16LE"),
            (be16, "UTF-16BE"),
            (le32, "UTF-32LE"),
            (be32, "UTF-32BE"),
        ] {
            let d = decode_text(&bytes).unwrap();
            assert_eq!((d.text.as_str(), d.encoding), (text, name));
            assert!(d.warning.unwrap().contains("byte pattern"));
        }
        let mut with_bom = vec![0xFF, 0xFE, 0, 0];
        with_bom.extend(text.chars().flat_map(|c| (c as u32).to_le_bytes()));
        assert_eq!(decode_text(&with_bom).unwrap().text, text);
    }

    #[test]
    fn xml_declaration_decides() {
        let d = decode_text(
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-5\"?><a>\xbf\xe0\xd8\xd2\xd5\xe2</a>",
        )
        .unwrap();
        assert!(d.text.contains("Привет"));
        assert_eq!(d.warning, None);
        // Labels outside the Encoding Standard that real files carry.
        let d = decode_text(
            b"<?xml version='1.0' encoding='MacCyrillic'?><a>\x8f\xf0\xe8\xe2\xe5\xf2</a>",
        )
        .unwrap();
        assert!(d.text.contains("Привет"), "{}", d.text);
        let d =
            decode_text(b"<?xml version='1.0' encoding='IBM855'?><a>\xdd\xe1\xb7\xeb\xa8\xe5</a>")
                .unwrap();
        assert!(d.text.contains("Привет"), "{}", d.text);
        let (jis, _, _) = encoding_rs::ISO_2022_JP.encode("日本語のテキスト");
        assert_eq!(decode_text(&jis).unwrap().text, "日本語のテキスト");
    }

    #[test]
    fn broken_utf8_is_replaced_and_flagged() {
        let mut bytes = "café crème brûlée, naïve façade, déjà vu and "
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(b"\xff\xfe bad");
        let d = decode_text(&bytes).unwrap();
        assert!(d
            .text
            .starts_with("café crème brûlée, naïve façade, déjà vu and "));
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
