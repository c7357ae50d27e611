//! Bytes + media type -> clean text with provenance (page starts, heading paths).
//!
//! Invariant: extraction is a pure function of (bytes, media type, [`EXTRACTOR_VERSION`],
//! [`ExtractOptions::fingerprint`]); the same input always yields the same text, and every
//! offset it reports points at a `char` boundary of that text.

mod archive;
mod docx;
mod email;
mod epub;
mod html;
mod markdown;
mod ocr;
mod odf;
mod pdf;
mod pdf_font;
mod pdf_layout;
mod pptx;
mod sheet;
mod text;
mod xml;

use serde::Serialize;

pub use ocr::Ocr;
pub use text::{decode_text, normalize, Decoded};

/// Bumped whenever extraction output can change for the same bytes; part of the pipeline
/// fingerprint, so a bump re-indexes affected documents. 2: legacy encodings detected by
/// chardetng, UTF-16/32 without BOM, Office/OpenDocument/EPUB/email formats, PDF repair.
pub const EXTRACTOR_VERSION: u32 = 2;

/// The closed set of formats freshet reads. Anything else is skipped with a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaType {
    Markdown,
    PlainText,
    Code,
    Html,
    Pdf,
    Docx,
    Odt,
    Pptx,
    Odp,
    Xlsx,
    Xls,
    Ods,
    Epub,
    Email,
    /// Read only by OCR ([`ExtractOptions::ocr`]); skipped without it.
    Image,
}

impl MediaType {
    pub const ALL: [MediaType; 15] = [
        MediaType::Markdown,
        MediaType::PlainText,
        MediaType::Code,
        MediaType::Html,
        MediaType::Pdf,
        MediaType::Docx,
        MediaType::Odt,
        MediaType::Pptx,
        MediaType::Odp,
        MediaType::Xlsx,
        MediaType::Xls,
        MediaType::Ods,
        MediaType::Epub,
        MediaType::Email,
        MediaType::Image,
    ];

    /// What this type's own reader adds to the fingerprint of its documents: bumped when
    /// only this format's output changes, so that only its documents are read again.
    /// Email 2: attachments are documents of their own, no longer parts of the message.
    /// An email's includes every other type's, since its attachments are redone only
    /// through it.
    pub fn reader_version(self) -> String {
        match self {
            MediaType::Email => {
                let mut version = String::from(";email=v2");
                for other in MediaType::ALL.iter().filter(|m| **m != MediaType::Email) {
                    version.push_str(&other.reader_version());
                }
                version
            }
            _ => String::new(),
        }
    }

    /// The media type a source names: [`MediaType::name`] of each variant.
    pub fn from_name(name: &str) -> Option<MediaType> {
        Some(match name {
            "text" => MediaType::PlainText,
            "markdown" => MediaType::Markdown,
            "html" => MediaType::Html,
            "code" => MediaType::Code,
            "pdf" => MediaType::Pdf,
            "docx" => MediaType::Docx,
            "odt" => MediaType::Odt,
            "pptx" => MediaType::Pptx,
            "odp" => MediaType::Odp,
            "xlsx" => MediaType::Xlsx,
            "xls" => MediaType::Xls,
            "ods" => MediaType::Ods,
            "epub" => MediaType::Epub,
            "email" => MediaType::Email,
            "image" => MediaType::Image,
            _ => return None,
        })
    }

    /// The name [`MediaType::from_name`] reads, as stored in the ledger and the payload.
    pub fn name(self) -> &'static str {
        match self {
            MediaType::Markdown => "markdown",
            MediaType::PlainText => "text",
            MediaType::Code => "code",
            MediaType::Html => "html",
            MediaType::Pdf => "pdf",
            MediaType::Docx => "docx",
            MediaType::Odt => "odt",
            MediaType::Pptx => "pptx",
            MediaType::Odp => "odp",
            MediaType::Xlsx => "xlsx",
            MediaType::Xls => "xls",
            MediaType::Ods => "ods",
            MediaType::Epub => "epub",
            MediaType::Email => "email",
            MediaType::Image => "image",
        }
    }

    /// Decides by file name alone, so unknown files are skipped without being read.
    pub fn from_key(key: &str) -> Option<MediaType> {
        let name = key.rsplit('/').next().unwrap_or(key);
        let lower = name.to_ascii_lowercase();
        let Some((_, ext)) = lower.rsplit_once('.') else {
            return match lower.as_str() {
                "readme" | "license" | "licence" | "changelog" | "authors" | "notice"
                | "contributing" | "copying" => Some(MediaType::PlainText),
                "makefile" | "dockerfile" | "justfile" | "rakefile" | "gemfile" => {
                    Some(MediaType::Code)
                }
                _ => None,
            };
        };
        Some(match ext {
            "md" | "markdown" | "mdx" | "mkd" => MediaType::Markdown,
            "txt" | "text" | "rst" | "adoc" | "asciidoc" | "org" | "tex" | "csv" | "tsv" => {
                MediaType::PlainText
            }
            "html" | "htm" | "xhtml" => MediaType::Html,
            "pdf" => MediaType::Pdf,
            "docx" | "docm" => MediaType::Docx,
            "odt" => MediaType::Odt,
            "pptx" | "pptm" => MediaType::Pptx,
            "odp" => MediaType::Odp,
            "xlsx" | "xlsm" => MediaType::Xlsx,
            "xls" => MediaType::Xls,
            "ods" => MediaType::Ods,
            "epub" => MediaType::Epub,
            "eml" => MediaType::Email,
            "png" | "jpg" | "jpeg" | "jpe" | "tif" | "tiff" | "bmp" | "gif" | "webp" | "pbm"
            | "pgm" | "ppm" | "pnm" => MediaType::Image,
            "rs" | "py" | "pyi" | "js" | "mjs" | "cjs" | "ts" | "tsx" | "jsx" | "go" | "java"
            | "kt" | "kts" | "scala" | "c" | "h" | "cc" | "cpp" | "cxx" | "hpp" | "hh" | "cs"
            | "rb" | "php" | "swift" | "m" | "mm" | "sh" | "bash" | "zsh" | "fish" | "ps1"
            | "sql" | "toml" | "yaml" | "yml" | "json" | "jsonc" | "xml" | "css" | "scss"
            | "sass" | "less" | "lua" | "r" | "jl" | "ex" | "exs" | "erl" | "hrl" | "hs" | "ml"
            | "mli" | "zig" | "dart" | "vue" | "svelte" | "proto" | "graphql" | "gql" | "tf"
            | "hcl" | "ini" | "cfg" | "conf" | "gradle" | "cmake" | "nix" | "pl" | "pm" | "clj"
            | "cljs" | "elm" | "fs" | "fsx" | "v" | "sv" | "vhd" => MediaType::Code,
            _ => return None,
        })
    }

    /// Whether the chunker should split along Markdown structure.
    pub fn is_markdown_like(self) -> bool {
        // HTML and the structured formats are rendered to Markdown during extraction.
        !matches!(
            self,
            MediaType::PlainText | MediaType::Code | MediaType::Pdf | MediaType::Image
        )
    }
}

/// A document as clean text, with what is known about where each part came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub text: String,
    /// `(byte offset, page number)` where each page begins, ascending (PDF only).
    pub page_starts: Vec<(usize, u32)>,
    /// `(byte offset, heading path)` where each section begins, ascending.
    pub sections: Vec<(usize, Vec<String>)>,
    pub title: Option<String>,
    /// Set when bytes had to be decoded by guessing or with replacement characters, or
    /// when part of the document (a page, a chapter, an attachment) could not be read.
    pub decode_warning: Option<String>,
    /// Fields the format itself carries into the payload (an email's subject, from, to,
    /// date).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Documents carried inside this one (an email's attachments): each becomes a
    /// document of its own, keyed `<this key>/<name>`.
    pub parts: Vec<Part>,
}

/// A document inside another: an attachment, by its file name and type.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Unique among its siblings, and a single key segment (no `/`).
    pub name: String,
    pub media: MediaType,
    /// The content hash of the attachment's bytes.
    pub hash: String,
    /// Its text, or why it could not be read (the attachment fails alone).
    pub doc: Result<Extracted, String>,
}

impl Extracted {
    /// The page a byte offset falls on.
    pub fn page_at(&self, offset: usize) -> Option<u32> {
        let idx = self
            .page_starts
            .partition_point(|(start, _)| *start <= offset);
        idx.checked_sub(1).map(|i| self.page_starts[i].1)
    }

    /// The heading path in force at a byte offset.
    pub fn heading_path_at(&self, offset: usize) -> &[String] {
        let idx = self.sections.partition_point(|(start, _)| *start <= offset);
        idx.checked_sub(1)
            .map(|i| self.sections[i].1.as_slice())
            .unwrap_or(&[])
    }
}

/// Why a document yields nothing to index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Not a failure: the document is fine but has nothing to index (empty file, unknown
    /// type). Recorded as `skipped`.
    #[error("{0}")]
    Skip(String),
    /// The content is broken or unreadable as its type. Recorded as `failed`.
    #[error("{0}")]
    Invalid(String),
}

/// How extraction reads what has no text of its own: scanned pages and images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtractOptions {
    /// OCR for images and for PDF pages that are only images; `None` leaves them out.
    pub ocr: Option<Ocr>,
}

impl ExtractOptions {
    /// What these options add to the fingerprint of a document they apply to (empty for
    /// the defaults, so indexes built without OCR keep theirs).
    pub fn fingerprint(&self) -> String {
        match &self.ocr {
            Some(ocr) => format!(";ocr={}", ocr.fingerprint()),
            None => String::new(),
        }
    }

    /// Whether these options can change what a document of this type yields: turning OCR
    /// on or off re-reads PDFs, images and emails (their attachments), nothing else.
    pub fn apply_to(media: MediaType) -> bool {
        matches!(media, MediaType::Pdf | MediaType::Image | MediaType::Email)
    }

    /// Why a document of this type is skipped without being read, under these options.
    pub fn skip_unread(&self, media: MediaType) -> Option<String> {
        (media == MediaType::Image && self.ocr.is_none()).then(|| {
            "an image: its text is read only by OCR; set extract.ocr = \"tesseract\" to index it, or add it to `exclude` to silence this".to_string()
        })
    }
}

/// Extracts clean text with the default options (no OCR).
pub fn extract(bytes: &[u8], media: MediaType) -> Result<Extracted, ExtractError> {
    extract_with(bytes, media, &ExtractOptions::default())
}

/// Extracts clean text. Pure (OCR included: the same tesseract reads the same image the
/// same way) and CPU-bound: call it off the async runtime.
pub fn extract_with(
    bytes: &[u8],
    media: MediaType,
    options: &ExtractOptions,
) -> Result<Extracted, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Skip(
            "empty file (0 bytes): nothing to index".into(),
        ));
    }
    if let Some(reason) = options.skip_unread(media) {
        return Err(ExtractError::Skip(reason));
    }
    let extracted = match media {
        MediaType::Pdf => pdf::extract(bytes, options.ocr.as_ref())?,
        MediaType::Image => image(bytes, options.ocr.as_ref().expect("skipped without OCR"))?,
        MediaType::Html => html::extract(bytes)?,
        MediaType::Docx => docx::extract(bytes)?,
        MediaType::Odt => odf::extract(bytes, odf::Kind::Text)?,
        MediaType::Pptx => pptx::extract(bytes)?,
        MediaType::Odp => odf::extract(bytes, odf::Kind::Presentation)?,
        MediaType::Xlsx => sheet::extract_xlsx(bytes)?,
        MediaType::Xls => sheet::extract_xls(bytes)?,
        MediaType::Ods => odf::extract(bytes, odf::Kind::Spreadsheet)?,
        MediaType::Epub => epub::extract(bytes)?,
        MediaType::Email => email::extract(bytes, options)?,
        MediaType::Markdown | MediaType::PlainText | MediaType::Code => {
            let decoded = decode_text(bytes)?;
            let text = normalize(&decoded.text, media != MediaType::Code);
            let sections = if media == MediaType::Markdown {
                markdown_sections(&text)
            } else {
                Vec::new()
            };
            let title = sections
                .iter()
                .find(|(_, path)| path.len() == 1)
                .map(|(_, path)| path[0].clone());
            Extracted {
                text,
                page_starts: Vec::new(),
                sections,
                title,
                decode_warning: decoded.warning,
                metadata: Default::default(),
                parts: Vec::new(),
            }
        }
    };
    if extracted.text.trim().is_empty() && extracted.parts.is_empty() {
        return Err(ExtractError::Skip(
            "no text after cleaning (empty or whitespace-only document)".into(),
        ));
    }
    Ok(extracted)
}

/// An image's text by OCR: one page per image (a multi-page TIFF has several).
fn image(bytes: &[u8], ocr: &Ocr) -> Result<Extracted, ExtractError> {
    let read = ocr
        .image(bytes)
        .map_err(|e| ExtractError::Invalid(format!("OCR: {e}")))?;
    if read.pages.is_empty() {
        return Err(ExtractError::Skip(format!(
            "no legible text found by OCR ({})",
            read.refused.join("; ")
        )));
    }
    let mut text = String::new();
    let mut page_starts = Vec::new();
    for (number, page) in &read.pages {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        page_starts.push((text.len(), *number));
        text.push_str(&normalize(page, true));
    }
    let mut metadata = serde_json::Map::new();
    ocr::note(&mut metadata, read.confidence, None);
    Ok(Extracted {
        text,
        // A single image is one page; numbering it would say nothing.
        page_starts: if read.pages.len() > 1 {
            page_starts
        } else {
            Vec::new()
        },
        sections: Vec::new(),
        title: None,
        decode_warning: (!read.refused.is_empty())
            .then(|| format!("OCR left out {}", read.refused.join("; "))),
        metadata,
        parts: Vec::new(),
    })
}

/// Heading paths of ATX headings (`# Title`) outside fenced code blocks.
pub fn markdown_sections(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut sections = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut fence: Option<&str> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if trimmed.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        let level = line.bytes().take_while(|b| *b == b'#').count();
        if !(1..=6).contains(&level) {
            continue;
        }
        let rest = &line[level..];
        if !(rest.starts_with(' ') || rest.starts_with('\t') || rest.trim().is_empty()) {
            continue;
        }
        let title = rest.trim().trim_end_matches('#').trim().to_string();
        if title.is_empty() {
            continue;
        }
        path.retain(|(l, _)| *l < level);
        path.push((level, title));
        sections.push((start, path.iter().map(|(_, t)| t.clone()).collect()));
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_by_name() {
        assert_eq!(
            MediaType::from_key("a/b/README.md"),
            Some(MediaType::Markdown)
        );
        assert_eq!(MediaType::from_key("x.HTML"), Some(MediaType::Html));
        assert_eq!(MediaType::from_key("src/main.rs"), Some(MediaType::Code));
        assert_eq!(MediaType::from_key("doc.pdf"), Some(MediaType::Pdf));
        assert_eq!(MediaType::from_key("LICENSE"), Some(MediaType::PlainText));
        assert_eq!(MediaType::from_key("photo.JPG"), Some(MediaType::Image));
        assert_eq!(MediaType::from_key("photo.heic"), None);
        assert_eq!(MediaType::from_key("archive.tar.gz"), None);
    }

    #[test]
    fn markdown_heading_paths_nest_and_ignore_code_fences() {
        let text = "# A\nintro\n## B\nx\n```\n# not a heading\n```\n### C\ny\n## D\nz\n";
        let sections = markdown_sections(text);
        let paths: Vec<Vec<&str>> = sections
            .iter()
            .map(|(_, p)| p.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            paths,
            vec![
                vec!["A"],
                vec!["A", "B"],
                vec!["A", "B", "C"],
                vec!["A", "D"]
            ]
        );
        let extracted = Extracted {
            text: text.into(),
            page_starts: vec![],
            sections,
            title: None,
            decode_warning: None,
            metadata: Default::default(),
            parts: Vec::new(),
        };
        assert_eq!(
            extracted.heading_path_at(text.find("y").unwrap()),
            ["A", "B", "C"]
        );
        assert!(extracted.heading_path_at(0).len() == 1);
    }

    #[test]
    fn empty_and_whitespace_documents_are_skipped_not_failed() {
        assert!(matches!(
            extract(b"", MediaType::PlainText),
            Err(ExtractError::Skip(_))
        ));
        assert!(matches!(
            extract(b"  \n\n\t ", MediaType::Markdown),
            Err(ExtractError::Skip(_))
        ));
    }

    #[test]
    fn images_are_skipped_unread_without_ocr() {
        let reason = ExtractOptions::default()
            .skip_unread(MediaType::Image)
            .unwrap();
        assert!(reason.contains("extract.ocr"), "{reason}");
        assert_eq!(ExtractOptions::default().skip_unread(MediaType::Pdf), None);
        assert!(matches!(
            extract(b"\x89PNG....", MediaType::Image),
            Err(ExtractError::Skip(_))
        ));
        assert_eq!(ExtractOptions::default().fingerprint(), "");
    }
}
