//! Email (`.eml`, RFC 5322/MIME) -> the message's text and HTML bodies, with subject,
//! sender, recipients and date as payload fields; attachments of supported types become
//! parts (documents of their own under the message's key, with their own pages and
//! headings); forwarded messages are read inline to a bounded depth.
//!
//! Invariant: attachments are read by the same extractors as files, and one that cannot
//! be read is a failed part with its reason, never indexed as bytes.

use std::collections::HashSet;

use freshet_connectors::content_hash;
use mail_parser::{Address, MessageParser, MimeHeaders, PartType};

use super::markdown::MarkdownWriter;
use super::{extract_with, ExtractError, ExtractOptions, Extracted, MediaType, Part};

/// Forwarded messages inside forwarded messages: deeper ones are not opened.
const MAX_DEPTH: usize = 3;

pub fn extract(bytes: &[u8], options: &ExtractOptions) -> Result<Extracted, ExtractError> {
    let message = MessageParser::default().parse(bytes).ok_or_else(|| {
        ExtractError::Invalid("not a readable email message (no headers); exclude it".into())
    })?;
    let mut out = MarkdownWriter::default();
    let mut problems: Vec<String> = Vec::new();
    let mut parts = Vec::new();
    let mut names = HashSet::new();
    let mut found = Found {
        options,
        parts: &mut parts,
        names: &mut names,
        problems: &mut problems,
    };
    write_message(&message, &mut out, &mut found, 0);
    let subject = message.subject().map(str::to_string);
    let mut doc = out.finish(
        subject.clone(),
        (!problems.is_empty()).then(|| problems.join("; ")),
    )?;
    doc.parts = parts;
    let mut fields = serde_json::Map::new();
    if let Some(subject) = subject {
        fields.insert("subject".into(), subject.into());
    }
    if let Some(from) = message.from().map(addresses) {
        fields.insert("from".into(), from.into());
    }
    if let Some(to) = message.to().map(addresses) {
        fields.insert("to".into(), to.into());
    }
    if let Some(date) = message.date() {
        fields.insert("date".into(), date.to_rfc3339().into());
    }
    doc.metadata = fields;
    Ok(doc)
}

fn addresses(address: &Address) -> String {
    address
        .iter()
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(addr)) => format!("{name} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What reading a message collects besides its text.
struct Found<'a> {
    options: &'a ExtractOptions,
    parts: &'a mut Vec<Part>,
    /// Part names given so far (a forwarded message's attachments join the outer ones).
    names: &'a mut HashSet<String>,
    problems: &'a mut Vec<String>,
}

fn write_message(
    message: &mail_parser::Message,
    out: &mut MarkdownWriter,
    found: &mut Found,
    depth: usize,
) {
    for part in message.text_bodies() {
        match &part.body {
            PartType::Text(text) => out.paragraph(text),
            PartType::Html(html) => match super::html::extract(html.as_bytes()) {
                Ok(doc) => out.markdown(&doc.text),
                Err(err) => found.problems.push(format!("HTML body: {err}")),
            },
            _ => {}
        }
    }
    for part in message.attachments() {
        let given = part.attachment_name().unwrap_or("unnamed").to_string();
        if let PartType::Message(inner) = &part.body {
            if depth + 1 >= MAX_DEPTH {
                found.problems.push(format!(
                    "attachment {given}: forwarded too deep, not opened"
                ));
                continue;
            }
            out.heading(
                1,
                &format!("Attachment: {}", inner.subject().unwrap_or(&given)),
            );
            write_message(inner, out, found, depth + 1);
            continue;
        }
        let Some(media) = MediaType::from_key(&given).filter(|m| *m != MediaType::Email) else {
            continue;
        };
        let bytes = part.contents();
        let doc = match extract_with(bytes, media, found.options) {
            Ok(mut doc) => {
                if doc.title.is_none() {
                    doc.title = Some(given.clone());
                }
                Ok(doc)
            }
            // Nothing to index (empty, an image without OCR): not a document.
            Err(ExtractError::Skip(_)) => continue,
            Err(ExtractError::Invalid(reason)) => Err(reason),
        };
        found.parts.push(Part {
            name: unique_name(&given, found.names),
            media,
            hash: content_hash(bytes),
            doc,
        });
    }
}

/// A key segment for an attachment: its file name without path separators or control
/// characters, made unique among the message's parts (`report.pdf`, `report-2.pdf`).
fn unique_name(given: &str, taken: &mut HashSet<String>) -> String {
    let clean: String = given
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = if clean.is_empty() || clean == "." || clean == ".." {
        "attachment".to_string()
    } else {
        clean
    };
    let mut name = clean.clone();
    let mut n = 1;
    while !taken.insert(name.clone()) {
        n += 1;
        name = match clean.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
            _ => format!("{clean}-{n}"),
        };
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_one_unique_key_segment() {
        let mut taken = HashSet::new();
        assert_eq!(unique_name("report.pdf", &mut taken), "report.pdf");
        assert_eq!(unique_name("report.pdf", &mut taken), "report-2.pdf");
        assert_eq!(unique_name("report.pdf", &mut taken), "report-3.pdf");
        assert_eq!(unique_name("../x/y.txt", &mut taken), ".._x_y.txt");
        assert_eq!(unique_name(" ", &mut taken), "attachment");
        assert_eq!(unique_name("..", &mut taken), "attachment-2");
        assert_eq!(unique_name("README", &mut taken), "README");
        assert_eq!(unique_name("README", &mut taken), "README-2");
    }

    #[test]
    fn attachments_become_parts_and_a_broken_one_fails_alone() {
        let message = "From: a@example.com\r\nTo: b@example.com\r\nSubject: Q3\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n\
--XX\r\nContent-Type: text/plain\r\n\r\nSee the notes.\r\n\
--XX\r\nContent-Type: text/markdown\r\nContent-Disposition: attachment; filename=notes.md\r\n\r\n# Notes\r\nRevenue rose.\r\n\
--XX\r\nContent-Type: text/markdown\r\nContent-Disposition: attachment; filename=notes.md\r\n\r\n# More\r\nCosts fell.\r\n\
--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=broken.pdf\r\n\r\nnot a pdf at all\r\n\
--XX\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=data.zip\r\n\r\nPK\r\n\
--XX--\r\n";
        let doc = extract(message.as_bytes(), &ExtractOptions::default()).unwrap();
        assert!(doc.text.contains("See the notes."));
        assert!(
            !doc.text.contains("Revenue"),
            "attachments are not the body"
        );
        let names: Vec<&str> = doc.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["notes.md", "notes-2.md", "broken.pdf"]);
        let first = doc.parts[0].doc.as_ref().unwrap();
        assert!(first.text.contains("Revenue rose."));
        assert_eq!(first.title.as_deref(), Some("Notes"));
        assert_ne!(doc.parts[0].hash, doc.parts[1].hash);
        assert!(doc.parts[2].doc.is_err(), "{:?}", doc.parts[2].doc);
        assert_eq!(doc.decode_warning, None, "a failed attachment fails alone");
    }
}
