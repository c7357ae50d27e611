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
use super::pdf_font::SimpleFont;
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
            let n: Vec<f64> = bbox
                .iter()
                .filter_map(|o| {
                    o.as_float()
                        .ok()
                        .map(f64::from)
                        .or_else(|| o.as_i64().ok().map(|i| i as f64))
                })
                .collect();
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

fn font_texts<'a>(
    doc: &'a Document,
    fonts: BTreeMap<Vec<u8>, &'a Dictionary>,
    problems: &mut Vec<String>,
) -> BTreeMap<Vec<u8>, FontText<'a>> {
    fonts
        .into_iter()
        .map(|(name, font)| {
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
                return (name, FontText::Simple(simple));
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
            (name, text)
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
/// positioning, and the text of the Form XObjects it draws.
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
    let mut out = String::new();
    run_content(
        doc,
        &content,
        &fonts,
        &resource_dicts,
        &mut out,
        &mut notes,
        0,
    );
    Ok((out, notes))
}

fn run_content(
    doc: &Document,
    content: &Content,
    fonts: &BTreeMap<Vec<u8>, FontText>,
    resources: &[&Dictionary],
    out: &mut String,
    notes: &mut Notes,
    depth: usize,
) {
    let mut font: Option<&FontText> = None;
    let mut line_y: Option<f64> = None;
    let number = |o: &Object| {
        o.as_float()
            .ok()
            .map(f64::from)
            .or_else(|| o.as_i64().ok().map(|i| i as f64))
    };
    let space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with([' ', '\n']) {
            out.push(' ');
        }
    };
    let newline = |out: &mut String| {
        while out.ends_with(' ') {
            out.pop();
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    };
    for op in &content.operations {
        let operands = &op.operands;
        match op.operator.as_str() {
            "BT" => space(out),
            "Tf" => {
                font = operands
                    .first()
                    .and_then(|o| o.as_name().ok())
                    .and_then(|name| fonts.get(name));
            }
            "Td" | "TD" => {
                let (tx, ty) = (
                    operands.first().and_then(number).unwrap_or(0.0),
                    operands.get(1).and_then(number).unwrap_or(0.0),
                );
                // A move along the line may place the next glyph of the same word (some
                // writers position every glyph): only a move down starts a new line, and
                // only a move back to the left margin-ish after text separates words.
                if ty.abs() > 0.5 {
                    newline(out);
                } else if tx < -0.5 {
                    space(out);
                }
            }
            "T*" => newline(out),
            "Tm" => {
                let y = operands.get(5).and_then(number);
                if let (Some(previous), Some(y)) = (line_y, y) {
                    if (previous - y).abs() > 0.5 {
                        newline(out);
                    }
                }
                line_y = y;
            }
            "Tj" | "'" | "\"" => {
                if op.operator != "Tj" {
                    newline(out);
                }
                if let Some(Object::String(bytes, _)) = operands.last() {
                    show(font, bytes, out);
                }
            }
            "TJ" => {
                if let Some(Object::Array(items)) = operands.first() {
                    for item in items {
                        match item {
                            Object::String(bytes, _) => show(font, bytes, out),
                            // A gap wider than about a quarter em is a word space.
                            other => {
                                if number(other).is_some_and(|n| n < -200.0) {
                                    space(out);
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
                            out,
                            notes,
                            depth + 1,
                        );
                    }
                    _ => run_content(
                        doc,
                        &inner,
                        fonts,
                        &inner_resource_list,
                        out,
                        notes,
                        depth + 1,
                    ),
                }
                newline(out);
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

fn show(font: Option<&FontText>, bytes: &[u8], out: &mut String) {
    if let Some(text) = font.and_then(|f| f.decode(bytes)) {
        out.push_str(&text);
    }
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

    #[test]
    fn comments_go_but_strings_keep_their_percent_signs() {
        let content = b"BT % move\n/F1 12 Tf (50% off \\) % still) Tj <25> Tj ET %end";
        assert_eq!(
            strip_comments(content).as_ref(),
            b"BT \n/F1 12 Tf (50% off \\) % still) Tj <25> Tj ET "
        );
    }
}
