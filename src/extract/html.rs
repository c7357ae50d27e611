//! HTML -> clean text: decoded by its declared charset, boilerplate dropped, headings kept
//! as Markdown-style lines so sections and heading paths survive.
//!
//! Invariant: text inside script, style, nav, header, footer (and other non-content
//! elements) never reaches the output.

use ego_tree::iter::Edge;
use encoding_rs::Encoding;
use scraper::{Html, Node};

use super::text::{
    decode_by_bom, decode_declared, decode_undeclared, decode_with, normalize, xml_declared_label,
    Decoded,
};
use super::{markdown_sections, ExtractError, Extracted};

/// How many bytes the spec lets a `<meta charset>` hide behind.
const CHARSET_PRESCAN_BYTES: usize = 1024;

const DROPPED: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "header", "footer", "svg", "iframe", "head",
    "object", "canvas", "button", "select", "dialog",
];
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "aside",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "tr",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "hr",
    "address",
    "form",
    "fieldset",
    "details",
    "summary",
    "body",
    "caption",
    "thead",
    "tbody",
    "tfoot",
];

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let decoded = decode_html(bytes)?;
    let document = Html::parse_document(&decoded.text);
    let mut out = Renderer::default();
    let mut title = None;
    let mut dropped_depth = 0usize;
    let mut pre_depth = 0usize;
    let mut heading: Option<(usize, String)> = None;

    for edge in document.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(el) => {
                    let name = el.name();
                    if name == "title" && title.is_none() {
                        let text: String = node
                            .children()
                            .filter_map(|c| c.value().as_text().map(|t| t.to_string()))
                            .collect();
                        let text = collapse(&text);
                        title = (!text.is_empty()).then_some(text);
                    }
                    if DROPPED.contains(&name) {
                        dropped_depth += 1;
                    } else if dropped_depth == 0 {
                        if let Some(level) = heading_level(name) {
                            heading = Some((level, String::new()));
                        } else if name == "pre" {
                            pre_depth += 1;
                            out.block();
                        } else if name == "br" {
                            out.newline();
                        } else if name == "li" {
                            out.newline();
                            out.push_raw("- ");
                        } else if name == "td" || name == "th" {
                            out.push_raw(" ");
                        } else if BLOCKS.contains(&name) {
                            out.block();
                        }
                    }
                }
                Node::Text(text) if dropped_depth == 0 => {
                    if let Some((_, heading_text)) = heading.as_mut() {
                        heading_text.push_str(&text[..]);
                    } else if pre_depth > 0 {
                        out.push_raw(&text[..]);
                    } else {
                        out.push_inline(&text[..]);
                    }
                }
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(el) = node.value() {
                    let name = el.name();
                    if DROPPED.contains(&name) {
                        dropped_depth -= 1;
                    } else if dropped_depth == 0 {
                        if heading_level(name).is_some() {
                            if let Some((level, text)) = heading.take() {
                                let text = collapse(&text);
                                if !text.is_empty() {
                                    out.block();
                                    out.push_raw(&"#".repeat(level));
                                    out.push_raw(" ");
                                    out.push_raw(&text);
                                    out.block();
                                }
                            }
                        } else if name == "pre" {
                            pre_depth = pre_depth.saturating_sub(1);
                            out.block();
                        } else if name == "li" {
                            out.newline();
                        } else if BLOCKS.contains(&name) {
                            out.block();
                        }
                    }
                }
            }
        }
    }

    let text = normalize(&out.text, false);
    let sections = markdown_sections(&text);
    let title = title.or_else(|| {
        sections
            .iter()
            .find(|(_, p)| p.len() == 1)
            .map(|(_, p)| p[0].clone())
    });
    Ok(Extracted {
        text,
        page_starts: Vec::new(),
        sections,
        title,
        decode_warning: decoded.warning,
        metadata: Default::default(),
        parts: Vec::new(),
    })
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// HTML whitespace rules: any run of whitespace is one space.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct Renderer {
    text: String,
}

impl Renderer {
    fn block(&mut self) {
        let trimmed = self.text.trim_end_matches([' ', '\t']).len();
        self.text.truncate(trimmed);
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.text.push_str(if self.text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            });
        }
    }

    fn newline(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    fn push_raw(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn push_inline(&mut self, text: &str) {
        let starts_with_space = text.starts_with(char::is_whitespace);
        let ends_with_space = text.ends_with(char::is_whitespace);
        let words = collapse(text);
        if words.is_empty() {
            if starts_with_space && !self.text.ends_with([' ', '\n']) && !self.text.is_empty() {
                self.text.push(' ');
            }
            return;
        }
        if starts_with_space && !self.text.ends_with([' ', '\n']) && !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(&words);
        if ends_with_space {
            self.text.push(' ');
        }
    }
}

/// The charset, by the HTML rules that matter in practice: BOM, then an XML declaration
/// (XHTML), then a `<meta charset>` or `http-equiv` declaration in the first 1024 bytes,
/// then the undeclared rules (UTF-16/32 by byte pattern, UTF-8 if valid, else chardetng's
/// guess, flagged).
fn decode_html(bytes: &[u8]) -> Result<Decoded, ExtractError> {
    if let Some(decoded) = decode_by_bom(bytes) {
        return Ok(decoded);
    }
    if let Some(decoded) = xml_declared_label(bytes).and_then(|label| decode_declared(label, bytes))
    {
        return Ok(decoded);
    }
    if let Some(encoding) = declared_charset(&bytes[..bytes.len().min(CHARSET_PRESCAN_BYTES)]) {
        // A page cannot really be UTF-16 once we got here without a BOM; the spec says so too.
        let encoding = if encoding == encoding_rs::UTF_16LE || encoding == encoding_rs::UTF_16BE {
            encoding_rs::UTF_8
        } else {
            encoding
        };
        return Ok(decode_with(encoding, bytes));
    }
    decode_undeclared(bytes)
}

fn declared_charset(head: &[u8]) -> Option<&'static Encoding> {
    let lower: Vec<u8> = head.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = find(&lower[from..], b"<meta") {
        let start = from + pos;
        let end = lower[start..]
            .iter()
            .position(|b| *b == b'>')
            .map_or(lower.len(), |e| start + e);
        let tag = &lower[start..end];
        if let Some(cs) = find(tag, b"charset") {
            let rest = &tag[cs + b"charset".len()..];
            let rest = trim_ascii_start(rest);
            if let Some(rest) = rest.strip_prefix(b"=") {
                let rest = trim_ascii_start(rest);
                let rest = rest
                    .strip_prefix(b"\"")
                    .or_else(|| rest.strip_prefix(b"'"))
                    .unwrap_or(rest);
                let label_end = rest
                    .iter()
                    .position(|b| {
                        matches!(b, b'"' | b'\'' | b';' | b'/' | b' ' | b'\t' | b'\n' | b'\r')
                    })
                    .unwrap_or(rest.len());
                if let Some(encoding) = Encoding::for_label(&rest[..label_end]) {
                    return Some(encoding);
                }
            }
        }
        from = end;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boilerplate_is_dropped_and_headings_kept() {
        let html = br#"<html><head><title>Guide</title><style>.x{}</style></head><body>
            <header>Site header</header><nav><a href="/">Home</a></nav>
            <h1>Install</h1><p>Run the   <b>installer</b> now.</p>
            <script>var secret = "tracking";</script>
            <h2>Linux</h2><ul><li>apt</li><li>dnf</li></ul>
            <footer>Copyright</footer></body></html>"#;
        let out = extract(html).unwrap();
        assert_eq!(out.title.as_deref(), Some("Guide"));
        assert!(out.text.contains("# Install"), "{}", out.text);
        assert!(out.text.contains("Run the installer now."), "{}", out.text);
        assert!(out.text.contains("- apt\n- dnf"), "{}", out.text);
        for gone in ["tracking", "Site header", "Home", "Copyright", ".x{}"] {
            assert!(!out.text.contains(gone), "{gone} leaked: {}", out.text);
        }
        let linux = out.text.find("apt").unwrap();
        assert_eq!(out.heading_path_at(linux), ["Install", "Linux"]);
    }

    #[test]
    fn declared_latin1_charset_is_honoured() {
        let html =
            b"<html><head><meta charset=\"ISO-8859-1\"></head><body><p>caf\xe9</p></body></html>";
        let out = extract(html).unwrap();
        assert_eq!(out.text, "caf\u{e9}");
        assert_eq!(out.decode_warning, None);
        let html = b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1251\"><p>\xcf\xf0\xe8\xe2\xe5\xf2</p>";
        assert_eq!(extract(html).unwrap().text, "Привет");
    }
}
