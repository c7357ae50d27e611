//! PDF -> text per page with lopdf, page numbers kept for provenance.
//!
//! Invariant: a PDF yields text only from its own text layer; encrypted, damaged and
//! image-only PDFs are refused with a reason instead of being indexed as noise.

use super::text::normalize;
use super::{ExtractError, Extracted};

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let mut doc = lopdf::Document::load_mem(bytes).map_err(|err| {
        let message = err.to_string();
        if message.to_ascii_lowercase().contains("decrypt")
            || message.to_ascii_lowercase().contains("password")
        {
            encrypted()
        } else {
            ExtractError::Invalid(format!(
                "not a readable PDF (damaged or truncated?): {message}; re-export it or exclude it"
            ))
        }
    })?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(encrypted());
    }
    let pages = doc.get_pages();
    if pages.is_empty() {
        return Err(ExtractError::Invalid(
            "PDF has no pages (damaged?); re-export it or exclude it".into(),
        ));
    }
    let mut text = String::new();
    let mut page_starts = Vec::new();
    let mut failed_pages = Vec::new();
    for &number in pages.keys() {
        match doc.extract_text(&[number]) {
            Ok(page_text) => {
                let page_text = normalize(&page_text, true);
                if page_text.trim().is_empty() {
                    continue;
                }
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                page_starts.push((text.len(), number));
                text.push_str(&page_text);
            }
            Err(err) => failed_pages.push(format!("page {number}: {err}")),
        }
    }
    if text.trim().is_empty() {
        return Err(if failed_pages.is_empty() {
            ExtractError::Invalid(
                "PDF has no text layer (scanned images?); run OCR on it (e.g. ocrmypdf) or exclude it".into(),
            )
        } else {
            ExtractError::Invalid(format!(
                "no page of the PDF could be read ({}); re-export it or exclude it",
                failed_pages.join("; ")
            ))
        });
    }
    let decode_warning = (!failed_pages.is_empty()).then(|| {
        format!(
            "{} of {} pages could not be read and are missing: {}",
            failed_pages.len(),
            pages.len(),
            failed_pages.join("; ")
        )
    });
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
        decode_warning,
        metadata: Default::default(),
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

fn encrypted() -> ExtractError {
    ExtractError::Invalid(
        "password-protected (encrypted) PDF; save an unencrypted copy or exclude it".into(),
    )
}
