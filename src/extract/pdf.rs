//! PDF -> text per page with lopdf, page numbers kept for provenance.
//!
//! Invariant: a PDF yields text only from its own text layer, page by page: one bad font
//! degrades that font's text only (its base encoding stands in for an unreadable CMap), a
//! damaged cross-reference table is rebuilt by scanning for objects, a PDF whose user
//! password is empty opens as every viewer opens it, and what still cannot be read (a real
//! password, image-only pages without OCR) is refused or flagged with a reason, never
//! indexed as noise. With OCR, pages that draw images but carry no text, and pages whose
//! fonts map to no Unicode, are rendered and read by tesseract instead.

use std::collections::BTreeMap;

use lopdf::content::Content;
use lopdf::{Dictionary, Document, Encoding, Object, ObjectId};

use super::ocr::Ocr;
use super::pdf_font::{Advances, SimpleFont};
use super::pdf_layout::{column_order, logical_lines, Place, Span};
use super::text::normalize;
use super::{ExtractError, Extracted};

/// How deep Form XObjects may nest inside one another before the rest is skipped.
const MAX_FORM_DEPTH: usize = 8;

/// Pages OCR reads in one document at most; later image-only pages are named as missing.
const MAX_OCR_PAGES: usize = 2_000;

pub fn extract(bytes: &[u8], ocr: Option<&Ocr>) -> Result<Extracted, ExtractError> {
    let (doc, repaired) = load(bytes)?;
    // lopdf opens an encrypted PDF with the empty user password as it loads it; a state
    // left unset means a real password is needed.
    if doc.is_encrypted() && doc.encryption_state.is_none() {
        return Err(ExtractError::Invalid(
            "password-protected (encrypted) PDF that needs a user password to open; save an unencrypted copy or exclude it".into(),
        ));
    }
    let pages = doc.get_pages();
    if pages.is_empty() {
        return Err(ExtractError::Invalid(
            "PDF has no pages (damaged?); re-export it or exclude it".into(),
        ));
    }
    let mut texts: Vec<(u32, String)> = Vec::new();
    let mut failed_pages = Vec::new();
    let mut font_problems = Vec::new();
    // Pages that draw images but carry no text, and pages whose fonts map to no Unicode:
    // what OCR can read.
    let mut image_only = Vec::new();
    let mut unmapped = Vec::new();
    for (&number, &page_id) in &pages {
        match page_text(&doc, page_id) {
            Ok((page_text, notes)) => {
                font_problems.extend(
                    notes
                        .problems
                        .into_iter()
                        .map(|p| format!("page {number}: {p}")),
                );
                let page_text = normalize(&page_text, true);
                if page_text.trim().is_empty() {
                    if notes.images > 0 {
                        image_only.push(number);
                    }
                    continue;
                }
                // Codes no font maps to text come out as U+FFFD: such a page is garbage,
                // not text, and is left out (or read by OCR).
                let visible = page_text
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .count()
                    .max(1);
                let replaced = page_text.chars().filter(|c| *c == '\u{fffd}').count();
                if replaced * 10 > visible {
                    unmapped.push((number, format!(
                        "page {number}: {replaced} of {visible} characters have no Unicode mapping in their fonts"
                    )));
                    continue;
                }
                texts.push((number, page_text));
            }
            Err(err) => failed_pages.push(format!("page {number}: {err}")),
        }
    }
    let mut warnings = Vec::new();
    let mut metadata = serde_json::Map::new();
    match ocr {
        Some(ocr) if !image_only.is_empty() || !unmapped.is_empty() => {
            let mut wanted: Vec<(u32, Option<String>)> = image_only
                .iter()
                .map(|n| (*n, None))
                .chain(unmapped.into_iter().map(|(n, why)| (n, Some(why))))
                .collect();
            wanted.sort();
            let read = ocr_pages(bytes, &doc, &pages, &wanted, ocr)?;
            failed_pages.extend(read.failed);
            if !read.refused.is_empty() {
                warnings.push(format!("OCR left out {}", read.refused.join("; ")));
            }
            if !read.pages.is_empty() {
                let numbers: Vec<u32> = read.pages.iter().map(|(n, _)| *n).collect();
                super::ocr::note(&mut metadata, read.confidence, Some(&numbers));
                texts.extend(read.pages);
                texts.sort_by_key(|(n, _)| *n);
            }
        }
        _ => {
            failed_pages.extend(unmapped.into_iter().map(|(_, why)| why));
            if !image_only.is_empty() && !texts.is_empty() {
                warnings.push(format!(
                    "{} of {} pages are images without a text layer and are missing ({}); set extract.ocr = \"tesseract\" to read them",
                    image_only.len(),
                    pages.len(),
                    page_list(&image_only)
                ));
            }
        }
    }
    let mut text = String::new();
    let mut page_starts = Vec::new();
    for (number, page_text) in texts {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        page_starts.push((text.len(), number));
        text.push_str(&page_text);
    }
    if text.trim().is_empty() {
        return Err(if !image_only.is_empty() && ocr.is_none() {
            ExtractError::Invalid(format!(
                "PDF has no text layer: its {} pages are images (scanned?); set extract.ocr = \"tesseract\" (after `scripts/provision --ocr`) to read it by OCR, or exclude it",
                image_only.len()
            ))
        } else if failed_pages.is_empty() && warnings.is_empty() {
            ExtractError::Invalid(
                "PDF has no text layer and draws no images (blank or vector drawings only); exclude it".into(),
            )
        } else {
            let mut reasons = failed_pages;
            reasons.extend(warnings);
            ExtractError::Invalid(format!(
                "no page of the PDF could be read ({}); re-export it or exclude it",
                reasons.join("; ")
            ))
        });
    }
    if repaired {
        warnings.push(
            "damaged cross-reference table; rebuilt by scanning the file for objects".to_string(),
        );
    }
    if !failed_pages.is_empty() {
        warnings.push(format!(
            "{} of {} pages could not be read and are missing: {}",
            failed_pages.len(),
            pages.len(),
            failed_pages.join("; ")
        ));
    }
    if !font_problems.is_empty() {
        font_problems.truncate(10);
        warnings.push(format!("fonts read in part: {}", font_problems.join("; ")));
    }
    let title = doc
        .trailer
        .get(b"Info")
        .ok()
        .and_then(|info| info.as_reference().ok())
        .and_then(|id| doc.get_dictionary(id).ok())
        .and_then(|info| info.get(b"Title").ok())
        .and_then(|title| title.as_str().ok())
        .map(pdf_text_string)
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    Ok(Extracted {
        text,
        page_starts,
        sections: Vec::new(),
        title,
        decode_warning: (!warnings.is_empty()).then(|| warnings.join("; ")),
        metadata,
        parts: Vec::new(),
    })
}

/// What OCR made of a document's image pages.
struct OcrPages {
    pages: Vec<(u32, String)>,
    refused: Vec<String>,
    failed: Vec<String>,
    confidence: f32,
}

/// Renders and reads each wanted page (with the reason it has no usable text layer, when
/// it has one that is garbage); the file is handed to the renderer as it is.
fn ocr_pages(
    bytes: &[u8],
    doc: &Document,
    pages: &BTreeMap<u32, ObjectId>,
    wanted: &[(u32, Option<String>)],
    ocr: &Ocr,
) -> Result<OcrPages, ExtractError> {
    let mut file = tempfile::NamedTempFile::new()
        .map_err(|e| ExtractError::Invalid(format!("OCR: no temporary file: {e}")))?;
    std::io::Write::write_all(&mut file, bytes)
        .map_err(|e| ExtractError::Invalid(format!("OCR: cannot write a temporary file: {e}")))?;
    let mut out = OcrPages {
        pages: Vec::new(),
        refused: Vec::new(),
        failed: Vec::new(),
        confidence: 0.0,
    };
    let (mut weight, mut chars) = (0.0f32, 0usize);
    for (i, (number, garbled)) in wanted.iter().enumerate() {
        if i == MAX_OCR_PAGES {
            let rest: Vec<u32> = wanted[i..].iter().map(|(n, _)| *n).collect();
            out.failed.push(format!(
                "{} more image pages not read: OCR reads {MAX_OCR_PAGES} pages of one document at most ({})",
                rest.len(),
                page_list(&rest)
            ));
            break;
        }
        let size = page_size(doc, pages[number]);
        match ocr.pdf_page(file.path(), *number, size) {
            Ok(read) => {
                for (page, text) in read.pages {
                    let n = text.chars().filter(|c| !c.is_whitespace()).count();
                    weight += read.confidence * n as f32;
                    chars += n;
                    out.pages.push((page, normalize(&text, true)));
                }
                if let Some(why) = garbled.as_ref().filter(|_| !read.refused.is_empty()) {
                    out.failed.push(why.clone());
                }
                out.refused.extend(read.refused);
            }
            Err(err) => out.failed.push(format!(
                "page {number}: {}OCR: {err}",
                garbled
                    .as_ref()
                    .map(|w| format!("{w}; "))
                    .unwrap_or_default()
            )),
        }
    }
    out.confidence = weight / chars.max(1) as f32;
    Ok(out)
}

/// A page's size in points, from its own or an inherited MediaBox (US Letter if none).
fn page_size(doc: &Document, page_id: ObjectId) -> (f64, f64) {
    let mut id = Some(page_id);
    for _ in 0..32 {
        let Some(dict) = id.and_then(|i| doc.get_dictionary(i).ok()) else {
            break;
        };
        let bbox = dict
            .get(b"MediaBox")
            .ok()
            .and_then(|o| doc.dereference(o).ok())
            .and_then(|(_, o)| o.as_array().ok());
        if let Some(bbox) = bbox {
            let n: Vec<f64> = bbox.iter().filter_map(number).collect();
            if n.len() == 4 {
                return ((n[2] - n[0]).abs(), (n[3] - n[1]).abs());
            }
        }
        id = dict.get(b"Parent").and_then(Object::as_reference).ok();
    }
    (612.0, 792.0)
}

/// "1-3, 7, 9-10".
fn page_list(pages: &[u32]) -> String {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => runs.push((p, p)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the document; a damaged cross-reference table is rebuilt by scanning (`true`).
fn load(bytes: &[u8]) -> Result<(Document, bool), ExtractError> {
    let first_error = match Document::load_mem(bytes) {
        Ok(doc) if doc.is_encrypted() && doc.encryption_state.is_none() => {
            // lopdf 0.38 refuses a /Length in a V1 (40-bit RC4) encryption dictionary,
            // which the spec allows and old writers always wrote: blanked, it opens.
            if let Some(patched) = without_v1_key_length(bytes, &doc) {
                if let Ok(opened) = Document::load_mem(&patched) {
                    if opened.encryption_state.is_some() {
                        return Ok((opened, false));
                    }
                }
            }
            return Ok((doc, false));
        }
        Ok(doc) => return Ok((doc, false)),
        Err(err) => err.to_string(),
    };
    if let Some(rebuilt) = rebuild_xref(bytes) {
        if let Ok(doc) = Document::load_mem(&rebuilt) {
            if !doc.get_pages().is_empty() {
                return Ok((doc, true));
            }
        }
    }
    Err(ExtractError::Invalid(format!(
        "not a readable PDF (damaged or truncated, and no intact objects to rebuild it from): {first_error}; re-export it or exclude it"
    )))
}

/// The bytes with the `/Length` of a V1 encryption dictionary blanked out (same length,
/// so every offset stays right), or `None` when the dictionary is not that case.
fn without_v1_key_length(bytes: &[u8], doc: &Document) -> Option<Vec<u8>> {
    let (number, generation) = doc.trailer.get(b"Encrypt").ok()?.as_reference().ok()?;
    let header =
        regex::bytes::Regex::new(&format!(r"(?:^|\s){number}\s+{generation}\s+obj\b")).ok()?;
    let start = header.find_iter(bytes).last()?.end();
    let end = start + bytes[start..].windows(6).position(|w| w == b"endobj")?;
    let object = &bytes[start..end];
    if !regex::bytes::Regex::new(r"/V\s+1\b").ok()?.is_match(object) {
        return None;
    }
    let length = regex::bytes::Regex::new(r"/Length\s+\d+")
        .ok()?
        .find(object)?;
    let mut patched = bytes.to_vec();
    patched[start + length.start()..start + length.end()].fill(b' ');
    Some(patched)
}

/// The file with a fresh cross-reference table and trailer appended, listing every
/// `N G obj` found by scanning (the last definition of a number wins, as in an update)
/// and the catalog found among them. `None` when there is no catalog to start from.
fn rebuild_xref(bytes: &[u8]) -> Option<Vec<u8>> {
    let object_header =
        regex::bytes::Regex::new(r"(?m)(?:^|[\r\n\s])(\d{1,10})\s+(\d{1,5})\s+obj\b").ok()?;
    let catalog = regex::bytes::Regex::new(r"/Type\s*/Catalog\b").ok()?;
    let mut offsets: BTreeMap<u32, (usize, u16)> = BTreeMap::new();
    let mut root = None;
    let headers: Vec<_> = object_header.captures_iter(bytes).collect();
    for (i, caps) in headers.iter().enumerate() {
        let number: u32 = std::str::from_utf8(&caps[1]).ok()?.parse().ok()?;
        let generation: u16 = std::str::from_utf8(&caps[2]).ok()?.parse().ok()?;
        let start = caps.get(1)?.start();
        offsets.insert(number, (start, generation));
        let end = headers
            .get(i + 1)
            .and_then(|c| c.get(1))
            .map_or(bytes.len(), |m| m.start());
        if catalog.is_match(&bytes[start..end]) {
            root = Some((number, generation));
        }
    }
    let (root_number, root_generation) = root?;
    let size = offsets.keys().next_back()? + 1;
    let mut out = bytes.to_vec();
    out.extend_from_slice(b"\n");
    let xref_at = out.len();
    out.extend_from_slice(format!("xref\n0 {size}\n").as_bytes());
    for number in 0..size {
        match offsets.get(&number) {
            Some((offset, generation)) => {
                out.extend_from_slice(format!("{offset:010} {generation:05} n\r\n").as_bytes())
            }
            None => out.extend_from_slice(b"0000000000 65535 f\r\n"),
        }
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {size} /Root {root_number} {root_generation} R >>\nstartxref\n{xref_at}\n%%EOF\n"
        )
        .as_bytes(),
    );
    Some(out)
}

/// How a font's string bytes become text.
enum FontText<'a> {
    /// A one-byte font: ToUnicode, Differences glyph names, base encoding, code by code.
    Simple(SimpleFont),
    /// A composite font, through lopdf's CMap reading.
    Lopdf(Encoding<'a>),
    /// A composite (CID) font without a readable CMap: its codes mean nothing readable.
    Unreadable,
}

impl FontText<'_> {
    fn decode(&self, bytes: &[u8]) -> Option<String> {
        match self {
            FontText::Simple(font) => Some(font.decode(bytes)),
            FontText::Lopdf(encoding) => Document::decode_text(encoding, bytes).ok(),
            FontText::Unreadable => None,
        }
    }
}

/// A page's font: how its codes become text, and how far its glyphs advance.
struct PageFont<'a> {
    text: FontText<'a>,
    advances: Advances,
}

fn font_texts<'a>(
    doc: &'a Document,
    fonts: BTreeMap<Vec<u8>, &'a Dictionary>,
    problems: &mut Vec<String>,
) -> BTreeMap<Vec<u8>, PageFont<'a>> {
    fonts
        .into_iter()
        .map(|(name, font)| {
            let advances = Advances::of_font(doc, font);
            let subtype = font.get(b"Subtype").and_then(Object::as_name).ok();
            if subtype != Some(b"Type0") {
                // lopdf reads a ToUnicode CMap only for a font without a named encoding:
                // a copy without one gets it read.
                let mut bare = font.clone();
                bare.remove(b"Encoding");
                let cmap = bare
                    .has(b"ToUnicode")
                    .then(|| bare.get_font_encoding(doc).ok())
                    .flatten()
                    .filter(|e| matches!(e, Encoding::UnicodeMapEncoding(_)));
                let lookup = cmap.as_ref().map(|encoding| {
                    move |code: u8| {
                        Document::decode_text(encoding, &[code])
                            .ok()
                            .filter(|t| !t.is_empty() && !t.contains('\u{fffd}'))
                    }
                });
                let simple = SimpleFont::new(
                    doc,
                    font,
                    lookup.as_ref().map(|f| f as &dyn Fn(u8) -> Option<String>),
                );
                let text = FontText::Simple(simple);
                return (name, PageFont { text, advances });
            }
            let text = match font.get_font_encoding(doc) {
                Ok(encoding) => FontText::Lopdf(encoding),
                Err(err) => {
                    problems.push(format!(
                        "font {} unreadable ({err}); its text is missing",
                        String::from_utf8_lossy(&name)
                    ));
                    FontText::Unreadable
                }
            };
            (name, PageFont { text, advances })
        })
        .collect()
}

/// What a page's content walk noticed besides its text.
#[derive(Default)]
struct Notes {
    /// Fonts and forms read in part.
    problems: Vec<String>,
    /// Images drawn (XObjects and inline), at any form depth.
    images: usize,
}

/// A page's text in content order, with spaces and line breaks from the text operators'
/// positioning, and the text of the Form XObjects it draws; a page set in columns is then
/// read column by column.
fn page_text(doc: &Document, page_id: ObjectId) -> Result<(String, Notes), lopdf::Error> {
    let mut notes = Notes::default();
    let fonts = font_texts(
        doc,
        doc.get_page_fonts(page_id).unwrap_or_default(),
        &mut notes.problems,
    );
    let content = Content::decode(&strip_comments(&doc.get_page_content(page_id)?))?;
    let (resources, resource_ids) = doc.get_page_resources(page_id)?;
    let mut resource_dicts: Vec<&Dictionary> = resources.into_iter().collect();
    resource_dicts.extend(
        resource_ids
            .iter()
            .filter_map(|id| doc.get_dictionary(*id).ok()),
    );
    let mut page = PageOut::default();
    run_content(
        doc,
        &content,
        &fonts,
        &resource_dicts,
        Matrix::IDENTITY,
        &mut page,
        &mut notes,
        0,
    );
    let text = column_order(&page.text, &page.spans).unwrap_or(page.text);
    // Glyphs advance rightwards, so a line's right-to-left text is stored in visual order.
    Ok((logical_lines(text), notes))
}

/// The text a page's content shows so far, and where each shown string sits.
#[derive(Default)]
struct PageOut {
    text: String,
    spans: Vec<Span>,
}

/// A PDF transformation matrix `[a b c d e f]`, applied to row vectors as the spec does.
#[derive(Clone, Copy, Debug)]
struct Matrix([f64; 6]);

impl Matrix {
    const IDENTITY: Matrix = Matrix([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    fn translate(tx: f64, ty: f64) -> Matrix {
        Matrix([1.0, 0.0, 0.0, 1.0, tx, ty])
    }

    /// `self` applied first, then `then`.
    fn then(self, then: Matrix) -> Matrix {
        let [a, b, c, d, e, f] = self.0;
        let [a2, b2, c2, d2, e2, f2] = then.0;
        Matrix([
            a * a2 + b * c2,
            a * b2 + b * d2,
            c * a2 + d * c2,
            c * b2 + d * d2,
            e * a2 + f * c2 + e2,
            e * b2 + f * d2 + f2,
        ])
    }

    fn apply(self, x: f64, y: f64) -> (f64, f64) {
        let [a, b, c, d, e, f] = self.0;
        (x * a + y * c + e, x * b + y * d + f)
    }

    fn from_operands(operands: &[Object]) -> Option<Matrix> {
        let n: Vec<f64> = operands.iter().filter_map(number).collect();
        (n.len() == 6 && n.iter().all(|v| v.is_finite()))
            .then(|| Matrix([n[0], n[1], n[2], n[3], n[4], n[5]]))
    }
}

fn number(o: &Object) -> Option<f64> {
    o.as_float()
        .ok()
        .map(f64::from)
        .or_else(|| o.as_i64().ok().map(|i| i as f64))
}

/// The graphics and text state that places glyphs: what `q` saves and `Q` restores, plus
/// the text and line matrices of the current text object.
#[derive(Clone, Copy)]
struct TextState<'f, 'a> {
    ctm: Matrix,
    font: Option<&'f PageFont<'a>>,
    size: f64,
    char_space: f64,
    word_space: f64,
    /// `Tz` / 100.
    scale: f64,
    leading: f64,
    rise: f64,
    tm: Matrix,
    tlm: Matrix,
}

impl TextState<'_, '_> {
    fn next_line(&mut self, tx: f64, ty: f64) {
        self.tlm = Matrix::translate(tx, ty).then(self.tlm);
        self.tm = self.tlm;
    }

    /// Appends a string's text and its place, and moves the text matrix past its glyphs.
    /// A string placed a word space or more after the one before it on the same line is
    /// a new word, even where the stream moved there without a space of its own.
    fn show(&mut self, bytes: &[u8], page: &mut PageOut) {
        let Some(font) = self.font else {
            return;
        };
        let Some(text) = font.text.decode(bytes) else {
            return;
        };
        let to_page = self.tm.then(self.ctm);
        let measured = font.advances.measure(bytes);
        let advance = measured.as_ref().map_or(0.0, |m| {
            (m.advance / 1000.0 * self.size
                + m.glyphs as f64 * self.char_space
                + m.spaces as f64 * self.word_space)
                * self.scale
        });
        self.tm = Matrix::translate(advance, 0.0).then(self.tm);
        let [a, b, c, d, _, _] = to_page.0;
        // Only upright, unmirrored horizontal text has a place on a line.
        let upright = a > 0.0 && d > 0.0 && b.abs() <= 0.05 * a && c.abs() <= 0.05 * d;
        let size = self.size.abs() * c.hypot(d);
        let place = (upright && measured.is_some() && size.is_finite() && size > 0.0).then(|| {
            let (x0, baseline) = to_page.apply(0.0, self.rise);
            let (x1, _) = self.tm.then(self.ctm).apply(0.0, self.rise);
            Place {
                x0: x0.min(x1),
                x1: x0.max(x1),
                baseline,
                size,
            }
        });
        let previous = page.spans.last().filter(|s| s.end == page.text.len());
        if let (Some(here), Some(before)) = (place, previous.and_then(|s| s.place)) {
            let same_line = (here.baseline - before.baseline).abs() <= 0.3 * here.size;
            if font.advances.exact()
                && same_line
                && here.x0 - before.x1 > 0.2 * here.size
                && !text.starts_with(char::is_whitespace)
                && !page.text.ends_with(char::is_whitespace)
            {
                page.text.push(' ');
            }
        }
        let start = page.text.len();
        page.text.push_str(&text);
        page.spans.push(Span {
            start,
            end: page.text.len(),
            place,
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn run_content<'f, 'a>(
    doc: &Document,
    content: &Content,
    fonts: &'f BTreeMap<Vec<u8>, PageFont<'a>>,
    resources: &[&Dictionary],
    ctm: Matrix,
    page: &mut PageOut,
    notes: &mut Notes,
    depth: usize,
) {
    let mut state = TextState {
        ctm,
        font: None,
        size: 0.0,
        char_space: 0.0,
        word_space: 0.0,
        scale: 1.0,
        leading: 0.0,
        rise: 0.0,
        tm: Matrix::IDENTITY,
        tlm: Matrix::IDENTITY,
    };
    let mut saved: Vec<TextState> = Vec::new();
    let mut line_y: Option<f64> = None;
    let space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with([' ', '\n']) {
            out.push(' ');
        }
    };
    // Trailing spaces give way to the line break, inside the strings that showed them too.
    let newline = |page: &mut PageOut| {
        let out = &mut page.text;
        while out.ends_with(' ') {
            out.pop();
        }
        for span in page.spans.iter_mut().rev() {
            if span.end <= out.len() {
                break;
            }
            span.end = out.len();
            span.start = span.start.min(span.end);
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    };
    let operand = |operands: &[Object], i: usize| operands.get(i).and_then(number);
    for op in &content.operations {
        let operands = &op.operands;
        match op.operator.as_str() {
            "q" if saved.len() < 256 => saved.push(state),
            "Q" => {
                if let Some(previous) = saved.pop() {
                    state = TextState {
                        tm: state.tm,
                        tlm: state.tlm,
                        ..previous
                    };
                }
            }
            "cm" => {
                if let Some(m) = Matrix::from_operands(operands) {
                    state.ctm = m.then(state.ctm);
                }
            }
            "BT" => {
                space(&mut page.text);
                state.tm = Matrix::IDENTITY;
                state.tlm = Matrix::IDENTITY;
            }
            "Tf" => {
                state.font = operands
                    .first()
                    .and_then(|o| o.as_name().ok())
                    .and_then(|name| fonts.get(name));
                state.size = operand(operands, 1).unwrap_or(state.size);
            }
            "Tc" => state.char_space = operand(operands, 0).unwrap_or(0.0),
            "Tw" => state.word_space = operand(operands, 0).unwrap_or(0.0),
            "Tz" => state.scale = operand(operands, 0).unwrap_or(100.0) / 100.0,
            "TL" => state.leading = operand(operands, 0).unwrap_or(0.0),
            "Ts" => state.rise = operand(operands, 0).unwrap_or(0.0),
            "Td" | "TD" => {
                let (tx, ty) = (
                    operand(operands, 0).unwrap_or(0.0),
                    operand(operands, 1).unwrap_or(0.0),
                );
                if op.operator == "TD" {
                    state.leading = -ty;
                }
                state.next_line(tx, ty);
                // A move along the line may place the next glyph of the same word (some
                // writers position every glyph): only a move down starts a new line, and
                // only a move back to the left margin-ish after text separates words.
                if ty.abs() > 0.5 {
                    newline(page);
                } else if tx < -0.5 {
                    space(&mut page.text);
                }
            }
            "T*" => {
                state.next_line(0.0, -state.leading);
                newline(page);
            }
            "Tm" => {
                if let Some(m) = Matrix::from_operands(operands) {
                    state.tm = m;
                    state.tlm = m;
                }
                let y = operand(operands, 5);
                // A shift of less than half the type size is a mark or superscript
                // placed on the same line, not a new line.
                let half_size = (0.5 * state.size.abs() * state.tm.0[3].abs()).max(0.5);
                if let (Some(previous), Some(y)) = (line_y, y) {
                    if (previous - y).abs() > half_size {
                        newline(page);
                    }
                }
                line_y = y;
            }
            "Tj" | "'" | "\"" => {
                if op.operator == "\"" {
                    state.word_space = operand(operands, 0).unwrap_or(state.word_space);
                    state.char_space = operand(operands, 1).unwrap_or(state.char_space);
                }
                if op.operator != "Tj" {
                    state.next_line(0.0, -state.leading);
                    newline(page);
                }
                if let Some(Object::String(bytes, _)) = operands.last() {
                    state.show(bytes, page);
                }
            }
            "TJ" => {
                if let Some(Object::Array(items)) = operands.first() {
                    for item in items {
                        match item {
                            Object::String(bytes, _) => state.show(bytes, page),
                            other => {
                                let Some(n) = number(other) else { continue };
                                let shift = -n / 1000.0 * state.size * state.scale;
                                state.tm = Matrix::translate(shift, 0.0).then(state.tm);
                                // A gap wider than about a quarter em is a word space.
                                if n < -200.0 {
                                    space(&mut page.text);
                                }
                            }
                        }
                    }
                }
            }
            "BI" => notes.images += 1,
            "Do" if depth < MAX_FORM_DEPTH => {
                let Some(name) = operands.first().and_then(|o| o.as_name().ok()) else {
                    continue;
                };
                let Some(form) = find_xobject(doc, resources, name) else {
                    continue;
                };
                match form.dict.get(b"Subtype").and_then(Object::as_name) {
                    Ok(b"Form") => {}
                    Ok(b"Image") => {
                        notes.images += 1;
                        continue;
                    }
                    _ => continue,
                }
                let data = form
                    .decompressed_content()
                    .unwrap_or_else(|_| form.content.clone());
                let Ok(inner) = Content::decode(&strip_comments(&data)) else {
                    notes
                        .problems
                        .push("a form's content could not be parsed".into());
                    continue;
                };
                let form_ctm = form
                    .dict
                    .get(b"Matrix")
                    .ok()
                    .and_then(|m| doc.dereference(m).ok())
                    .and_then(|(_, m)| m.as_array().ok())
                    .and_then(|m| Matrix::from_operands(m))
                    .unwrap_or(Matrix::IDENTITY)
                    .then(state.ctm);
                let inner_resources: Option<&Dictionary> = form
                    .dict
                    .get(b"Resources")
                    .ok()
                    .and_then(|r| doc.dereference(r).ok())
                    .and_then(|(_, r)| r.as_dict().ok());
                let inner_fonts = inner_resources
                    .and_then(|r| r.get(b"Font").ok())
                    .and_then(|f| doc.dereference(f).ok())
                    .and_then(|(_, f)| f.as_dict().ok())
                    .map(|dict| {
                        dict.iter()
                            .filter_map(|(name, font)| {
                                let (_, font) = doc.dereference(font).ok()?;
                                Some((name.clone(), font.as_dict().ok()?))
                            })
                            .collect::<BTreeMap<Vec<u8>, &Dictionary>>()
                    });
                let mut inner_resource_list: Vec<&Dictionary> =
                    inner_resources.into_iter().collect();
                inner_resource_list.extend_from_slice(resources);
                match inner_fonts {
                    Some(inner_fonts) if !inner_fonts.is_empty() => {
                        let inner_fonts = font_texts(doc, inner_fonts, &mut notes.problems);
                        run_content(
                            doc,
                            &inner,
                            &inner_fonts,
                            &inner_resource_list,
                            form_ctm,
                            page,
                            notes,
                            depth + 1,
                        );
                    }
                    _ => run_content(
                        doc,
                        &inner,
                        fonts,
                        &inner_resource_list,
                        form_ctm,
                        page,
                        notes,
                        depth + 1,
                    ),
                }
                newline(page);
            }
            _ => {}
        }
    }
}

/// Content without `%` comments, which lopdf's content parser stops at (dropping the rest
/// of the page); strings `(...)` and hex strings `<...>` are left alone.
fn strip_comments(content: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !content.contains(&b'%') {
        return std::borrow::Cow::Borrowed(content);
    }
    let mut out = Vec::with_capacity(content.len());
    let (mut depth, mut hex, mut escaped, mut comment) = (0usize, false, false, false);
    for &b in content {
        if comment {
            if b == b'\n' || b == b'\r' {
                comment = false;
                out.push(b);
            }
            continue;
        }
        if depth > 0 {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'(') => depth += 1,
                (false, b')') => depth -= 1,
                _ => {}
            }
        } else if hex {
            hex = b != b'>';
        } else {
            match b {
                b'(' => depth = 1,
                b'<' => hex = true,
                b'%' => {
                    comment = true;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b);
    }
    std::borrow::Cow::Owned(out)
}

/// An XObject (form or image) by its resource name, from the innermost resources outwards.
fn find_xobject<'a>(
    doc: &'a Document,
    resources: &[&'a Dictionary],
    name: &[u8],
) -> Option<&'a lopdf::Stream> {
    resources.iter().find_map(|res| {
        let (_, xobjects) = doc.dereference(res.get(b"XObject").ok()?).ok()?;
        let (_, object) = doc
            .dereference(xobjects.as_dict().ok()?.get(name).ok()?)
            .ok()?;
        object.as_stream().ok()
    })
}

/// PDF text strings are UTF-16BE with a BOM, or PDFDocEncoding (close to windows-1252).
fn pdf_text_string(raw: &[u8]) -> String {
    match raw.strip_prefix(&[0xFE, 0xFF]) {
        Some(utf16) => encoding_rs::UTF_16BE
            .decode_without_bom_handling(utf16)
            .0
            .into_owned(),
        None => encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(raw)
            .0
            .into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-page PDF in Helvetica 10 pt (every glyph 5 pt wide) whose content stream
    /// shows `lines` (x, y, text) in the order given.
    fn pdf_showing(lines: &[(f64, f64, String)]) -> Vec<u8> {
        use lopdf::{dictionary, Stream};
        let mut doc = Document::with_version("1.5");
        let font = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
            "Encoding" => "WinAnsiEncoding", "FirstChar" => 32, "LastChar" => 126,
            "Widths" => vec![Object::Integer(500); 95],
        });
        let mut content = String::from("BT /F1 10 Tf\n");
        for (x, y, text) in lines {
            content.push_str(&format!("1 0 0 1 {x} {y} Tm ({text}) Tj\n"));
        }
        content.push_str("ET\n");
        let content = doc.add_object(Stream::new(dictionary! {}, content.into_bytes()));
        let pages = doc.new_object_id();
        let page = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages, "Contents" => content,
            "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
            "Resources" => dictionary! { "Font" => dictionary! { "F1" => font } },
        });
        doc.objects.insert(
            pages,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => vec![page.into()], "Count" => 1,
            }),
        );
        let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages });
        doc.trailer.set("Root", catalog);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn two_columns_read_one_after_the_other_whatever_order_the_stream_shows_them_in() {
        let title = "Freshet: Indexes That Stay Fresh Under Crashes".to_string();
        let left: Vec<String> = (1..=6)
            // The trailing space gives way to each line break.
            .map(|n| format!("left column sentence {n} tells one story "))
            .collect();
        let right: Vec<String> = (1..=6)
            .map(|n| format!("right column sentence {n} tells another"))
            .collect();
        let y = |k: usize| 700.0 - 12.0 * k as f64;
        let mut row_by_row = vec![(120.0, 750.0, title.clone())];
        let mut column_by_column = row_by_row.clone();
        for k in 0..6 {
            row_by_row.push((72.0, y(k), left[k].clone()));
            row_by_row.push((320.0, y(k), right[k].clone()));
        }
        column_by_column.extend((0..6).map(|k| (72.0, y(k), left[k].clone())));
        column_by_column.extend((0..6).map(|k| (320.0, y(k), right[k].clone())));
        let expected: Vec<&str> = std::iter::once(title.as_str())
            .chain(left.iter().map(|l| l.trim_end()))
            .chain(right.iter().map(String::as_str))
            .collect();
        for lines in [row_by_row, column_by_column] {
            let text = extract(&pdf_showing(&lines), None).unwrap().text;
            let read: Vec<&str> = text.lines().map(str::trim).collect();
            assert_eq!(read, expected, "{text}");
        }
    }

    #[test]
    fn rows_of_a_table_stay_rows() {
        let rows = [
            ("Owner", "search team"),
            ("Schedule", "hourly"),
            ("Store", "qdrant"),
        ];
        let mut lines = Vec::new();
        for (k, (key, value)) in rows.iter().enumerate() {
            let y = 700.0 - 12.0 * k as f64;
            lines.push((72.0, y, key.to_string()));
            lines.push((200.0, y, value.to_string()));
        }
        let text = extract(&pdf_showing(&lines), None).unwrap().text;
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>(),
            ["Owner", "search", "team", "Schedule", "hourly", "Store", "qdrant"],
            "{text}"
        );
    }

    #[test]
    fn comments_go_but_strings_keep_their_percent_signs() {
        let content = b"BT % move\n/F1 12 Tf (50% off \\) % still) Tj <25> Tj ET %end";
        assert_eq!(
            strip_comments(content).as_ref(),
            b"BT \n/F1 12 Tf (50% off \\) % still) Tj <25> Tj ET "
        );
    }
}
