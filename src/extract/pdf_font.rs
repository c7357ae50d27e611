//! How a simple PDF font's one-byte codes become text: its ToUnicode CMap where that maps
//! a code, else the glyph name its encoding's Differences give the code, else its base
//! encoding, as poppler and pdf.js read them.
//!
//! Invariant: a code that none of these maps yields nothing rather than a guess, so a
//! partial CMap (one that maps only a ligature) no longer blanks out the whole font.

use std::collections::BTreeMap;

use lopdf::{Dictionary, Document, Object};
use unicode_normalization::UnicodeNormalization;

/// Text for each of the 256 codes of a simple (one-byte) font.
pub(super) struct SimpleFont {
    codes: Vec<Option<String>>,
}

impl SimpleFont {
    /// Builds the table; `to_unicode` decodes one code through the font's CMap, if any.
    pub fn new(
        doc: &Document,
        font: &Dictionary,
        to_unicode: Option<&dyn Fn(u8) -> Option<String>>,
    ) -> SimpleFont {
        let encoding = font
            .get(b"Encoding")
            .ok()
            .and_then(|e| doc.dereference(e).ok())
            .map(|(_, e)| e);
        let (base_name, differences): (Option<&[u8]>, Option<&Vec<Object>>) = match encoding {
            Some(Object::Name(name)) => (Some(name.as_slice()), None),
            Some(Object::Dictionary(dict)) => (
                dict.get(b"BaseEncoding").and_then(Object::as_name).ok(),
                dict.get(b"Differences")
                    .ok()
                    .and_then(|d| doc.dereference(d).ok())
                    .and_then(|(_, d)| d.as_array().ok()),
            ),
            _ => (None, None),
        };
        let base: &'static encoding_rs::Encoding = match base_name {
            Some(b"MacRomanEncoding") => encoding_rs::MACINTOSH,
            // WinAnsi; StandardEncoding agrees with it on letters, digits and most signs.
            _ => encoding_rs::WINDOWS_1252,
        };
        let mut codes: Vec<Option<String>> = (0..=255u8)
            .map(|code| {
                if code < 0x20 {
                    return None;
                }
                let byte = [code];
                let (text, _, bad) = base.decode(&byte);
                (!bad).then(|| text.into_owned())
            })
            .collect();
        if base_name.is_none() {
            // StandardEncoding's quotes differ from WinAnsi's where TeX fonts use them.
            codes[0x27] = Some("\u{2019}".into());
            codes[0x60] = Some("\u{2018}".into());
        }
        if let Some(differences) = differences {
            let mut code = 0usize;
            for item in differences {
                match item {
                    Object::Integer(n) => code = (*n).clamp(0, 255) as usize,
                    Object::Name(name) => {
                        if code < 256 {
                            codes[code] = glyph_text(&String::from_utf8_lossy(name));
                        }
                        code += 1;
                    }
                    _ => {}
                }
            }
        }
        if let Some(to_unicode) = to_unicode {
            for (code, slot) in codes.iter_mut().enumerate() {
                if let Some(text) = to_unicode(code as u8) {
                    *slot = Some(text);
                }
            }
        }
        SimpleFont { codes }
    }

    pub fn decode(&self, bytes: &[u8]) -> String {
        bytes
            .iter()
            .filter_map(|b| self.codes[*b as usize].as_deref())
            .collect()
    }
}

/// Glyph advances of a font in thousandths of a text-space unit, by code, for placing its
/// text on the page (reading order only: a missing width falls back to an average one).
pub(super) enum Advances {
    /// One-byte codes (simple and Type3 fonts); `exact` unless the font has no `Widths`.
    Simple {
        widths: Box<[f64; 256]>,
        exact: bool,
    },
    /// Two-byte CIDs, as Identity CMaps give them: the `W` table and the default width.
    Composite {
        default: f64,
        widths: BTreeMap<u32, f64>,
    },
    /// Vertical writing: its glyphs do not advance along a line.
    Vertical,
}

/// What one string of a font measures: the advance of its glyphs, how many glyphs, and
/// how many of them are the one-byte space that word spacing widens.
pub(super) struct Measured {
    pub advance: f64,
    pub glyphs: usize,
    pub spaces: usize,
}

/// More `W` entries than this in one font are not kept (a hostile range cannot allocate).
const MAX_CID_WIDTHS: usize = 65_536;

impl Advances {
    pub fn of_font(doc: &Document, font: &Dictionary) -> Advances {
        let number = |o: &Object| -> Option<f64> {
            let (_, o) = doc.dereference(o).ok()?;
            o.as_float()
                .ok()
                .map(f64::from)
                .or_else(|| o.as_i64().ok().map(|i| i as f64))
        };
        fn array<'d>(doc: &'d Document, dict: &'d Dictionary, key: &[u8]) -> Option<&'d [Object]> {
            let (_, o) = doc.dereference(dict.get(key).ok()?).ok()?;
            o.as_array().ok().map(Vec::as_slice)
        }
        let descriptor_missing = |dict: &Dictionary| -> Option<f64> {
            let (_, d) = doc.dereference(dict.get(b"FontDescriptor").ok()?).ok()?;
            number(d.as_dict().ok()?.get(b"MissingWidth").ok()?)
        };
        if font.get(b"Subtype").and_then(Object::as_name).ok() == Some(b"Type0") {
            let vertical = font
                .get(b"Encoding")
                .ok()
                .and_then(|e| e.as_name().ok())
                .is_some_and(|name| name.ends_with(b"-V"));
            if vertical {
                return Advances::Vertical;
            }
            let descendant = array(doc, font, b"DescendantFonts")
                .and_then(|fonts| fonts.first())
                .and_then(|d| doc.dereference(d).ok())
                .and_then(|(_, d)| d.as_dict().ok());
            let Some(descendant) = descendant else {
                return Advances::Composite {
                    default: 1000.0,
                    widths: BTreeMap::new(),
                };
            };
            let default = descendant
                .get(b"DW")
                .ok()
                .and_then(number)
                .unwrap_or(1000.0);
            let mut widths = BTreeMap::new();
            let table = array(doc, descendant, b"W").unwrap_or_default();
            let mut i = 0;
            while i + 1 < table.len() && widths.len() < MAX_CID_WIDTHS {
                let Some(first) = number(&table[i]) else {
                    break;
                };
                let first = first.max(0.0) as u32;
                let next = doc.dereference(&table[i + 1]).ok().map(|(_, o)| o);
                if let Some(Object::Array(list)) = next {
                    for (k, w) in list.iter().enumerate() {
                        if let Some(w) = number(w) {
                            widths.insert(first.saturating_add(k as u32), w);
                        }
                    }
                    i += 2;
                } else {
                    let (Some(last), Some(w)) =
                        (number(&table[i + 1]), table.get(i + 2).and_then(number))
                    else {
                        break;
                    };
                    let last =
                        (last.max(0.0) as u32).min(first.saturating_add(MAX_CID_WIDTHS as u32));
                    for cid in first..=last {
                        if widths.len() >= MAX_CID_WIDTHS {
                            break;
                        }
                        widths.insert(cid, w);
                    }
                    i += 3;
                }
            }
            return Advances::Composite { default, widths };
        }
        // Type3 widths are in glyph space, which its FontMatrix scales to text space.
        let scale = array(doc, font, b"FontMatrix")
            .and_then(|m| m.first().and_then(number))
            .map(|a| a * 1000.0)
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        let missing = descriptor_missing(font)
            .filter(|w| *w > 0.0)
            .unwrap_or(500.0);
        let mut table = Box::new([missing * scale; 256]);
        let first = font.get(b"FirstChar").ok().and_then(number).unwrap_or(0.0);
        let listed = array(doc, font, b"Widths");
        let exact = listed.is_some();
        if let Some(widths) = listed {
            for (k, w) in widths.iter().enumerate() {
                let code = first as usize + k;
                if code < 256 {
                    if let Some(w) = number(w) {
                        table[code] = w * scale;
                    }
                }
            }
        }
        Advances::Simple {
            widths: table,
            exact,
        }
    }

    /// Whether the font states its widths, so a gap between two strings is a real one.
    pub fn exact(&self) -> bool {
        match self {
            Advances::Simple { exact, .. } => *exact,
            Advances::Composite { widths, .. } => !widths.is_empty(),
            Advances::Vertical => false,
        }
    }

    /// `None` for vertical writing.
    pub fn measure(&self, bytes: &[u8]) -> Option<Measured> {
        match self {
            Advances::Simple { widths, .. } => Some(Measured {
                advance: bytes.iter().map(|b| widths[*b as usize]).sum(),
                glyphs: bytes.len(),
                spaces: bytes.iter().filter(|b| **b == b' ').count(),
            }),
            Advances::Composite { default, widths } => {
                let codes = bytes
                    .chunks(2)
                    .map(|pair| pair.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32));
                let mut measured = Measured {
                    advance: 0.0,
                    glyphs: 0,
                    spaces: 0,
                };
                for code in codes {
                    measured.advance += widths.get(&code).copied().unwrap_or(*default);
                    measured.glyphs += 1;
                }
                Some(measured)
            }
            Advances::Vertical => None,
        }
    }
}

/// The text of a glyph name, by the Adobe Glyph List's rules for the names that carry
/// text: `uniXXXX`, `uXXXX`, letters and digits, ligatures, punctuation, and accented
/// Latin letters composed from their parts (`eacute`). Names with suffixes (`a.sc`)
/// read as their base.
pub(super) fn glyph_text(name: &str) -> Option<String> {
    let name = name.split('.').next().unwrap_or(name);
    if let Some(hex) = name.strip_prefix("uni") {
        if hex.len() >= 4 && hex.len() % 4 == 0 {
            let units: Option<Vec<u16>> = (0..hex.len() / 4)
                .map(|i| u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).ok())
                .collect();
            return units.and_then(|u| String::from_utf16(&u).ok());
        }
    }
    if let Some(hex) = name.strip_prefix('u') {
        if (4..=6).contains(&hex.len()) {
            if let Some(c) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                return Some(c.to_string());
            }
        }
    }
    if name.len() == 1 && name.chars().all(|c| c.is_ascii_alphabetic()) {
        return Some(name.to_string());
    }
    let named = match name {
        "space" | "nbspace" => " ",
        "exclam" => "!",
        "quotedbl" => "\"",
        "numbersign" => "#",
        "dollar" => "$",
        "percent" => "%",
        "ampersand" => "&",
        "quotesingle" => "'",
        "quoteright" => "\u{2019}",
        "quoteleft" => "\u{2018}",
        "quotedblleft" => "\u{201c}",
        "quotedblright" => "\u{201d}",
        "quotesinglbase" => "\u{201a}",
        "quotedblbase" => "\u{201e}",
        "parenleft" => "(",
        "parenright" => ")",
        "asterisk" => "*",
        "plus" => "+",
        "comma" => ",",
        "hyphen" | "minus" => "-",
        "period" => ".",
        "slash" => "/",
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "colon" => ":",
        "semicolon" => ";",
        "less" => "<",
        "equal" => "=",
        "greater" => ">",
        "question" => "?",
        "at" => "@",
        "bracketleft" => "[",
        "backslash" => "\\",
        "bracketright" => "]",
        "asciicircum" => "^",
        "underscore" => "_",
        "grave" => "`",
        "braceleft" => "{",
        "bar" => "|",
        "braceright" => "}",
        "asciitilde" => "~",
        "endash" => "\u{2013}",
        "emdash" => "\u{2014}",
        "bullet" => "\u{2022}",
        "ellipsis" => "\u{2026}",
        "dagger" => "\u{2020}",
        "daggerdbl" => "\u{2021}",
        "section" => "\u{a7}",
        "paragraph" => "\u{b6}",
        "copyright" => "\u{a9}",
        "registered" => "\u{ae}",
        "trademark" => "\u{2122}",
        "degree" => "\u{b0}",
        "multiply" => "\u{d7}",
        "divide" => "\u{f7}",
        "plusminus" => "\u{b1}",
        "exclamdown" => "\u{a1}",
        "questiondown" => "\u{bf}",
        "guillemotleft" => "\u{ab}",
        "guillemotright" => "\u{bb}",
        "sterling" => "\u{a3}",
        "yen" => "\u{a5}",
        "Euro" => "\u{20ac}",
        "cent" => "\u{a2}",
        "ff" => "ff",
        "fi" => "fi",
        "fl" => "fl",
        "ffi" => "ffi",
        "ffl" => "ffl",
        "dotlessi" => "\u{131}",
        "germandbls" => "\u{df}",
        "ae" => "\u{e6}",
        "AE" => "\u{c6}",
        "oe" => "\u{153}",
        "OE" => "\u{152}",
        "oslash" => "\u{f8}",
        "Oslash" => "\u{d8}",
        "lslash" => "\u{142}",
        "Lslash" => "\u{141}",
        "eth" => "\u{f0}",
        "thorn" => "\u{fe}",
        _ => "",
    };
    if !named.is_empty() {
        return Some(named.to_string());
    }
    // An accented letter: a base letter and an accent's name.
    for (accent, mark) in [
        ("acute", '\u{301}'),
        ("grave", '\u{300}'),
        ("circumflex", '\u{302}'),
        ("dieresis", '\u{308}'),
        ("tilde", '\u{303}'),
        ("ring", '\u{30a}'),
        ("cedilla", '\u{327}'),
        ("caron", '\u{30c}'),
        ("ogonek", '\u{328}'),
        ("breve", '\u{306}'),
        ("macron", '\u{304}'),
        ("dotaccent", '\u{307}'),
        ("hungarumlaut", '\u{30b}'),
    ] {
        if let Some(letter) = name.strip_suffix(accent) {
            if letter.len() == 1 && letter.chars().all(|c| c.is_ascii_alphabetic()) {
                return Some(format!("{letter}{mark}").nfc().collect());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyph_names_become_text() {
        assert_eq!(glyph_text("a").as_deref(), Some("a"));
        assert_eq!(glyph_text("fi").as_deref(), Some("fi"));
        assert_eq!(glyph_text("eacute").as_deref(), Some("é"));
        assert_eq!(glyph_text("Scaron").as_deref(), Some("Š"));
        assert_eq!(glyph_text("uni20AC").as_deref(), Some("€"));
        assert_eq!(glyph_text("u1F600").as_deref(), Some("😀"));
        assert_eq!(glyph_text("seven.oldstyle").as_deref(), Some("7"));
        assert_eq!(glyph_text("g123"), None);
    }
}
