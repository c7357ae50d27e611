//! Email (`.eml`, RFC 5322/MIME) -> the message's text and HTML bodies, with subject,
//! sender, recipients and date as payload fields; attachments of supported types become
//! parts of their own (chunked apart, with their own pages and headings, under the
//! message's key); forwarded messages are read inline to a bounded depth.
//!
//! Invariant: attachments are read by the same extractors as files, and one that cannot
//! be read is named in the warning, never indexed as bytes.

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
    write_message(&message, options, &mut out, &mut parts, &mut problems, 0);
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

fn write_message(
    message: &mail_parser::Message,
    options: &ExtractOptions,
    out: &mut MarkdownWriter,
    parts: &mut Vec<Part>,
    problems: &mut Vec<String>,
    depth: usize,
) {
    for part in message.text_bodies() {
        match &part.body {
            PartType::Text(text) => out.paragraph(text),
            PartType::Html(html) => match super::html::extract(html.as_bytes()) {
                Ok(doc) => out.markdown(&doc.text),
                Err(err) => problems.push(format!("HTML body: {err}")),
            },
            _ => {}
        }
    }
    for part in message.attachments() {
        let name = part.attachment_name().unwrap_or("unnamed").to_string();
        if let PartType::Message(inner) = &part.body {
            if depth + 1 >= MAX_DEPTH {
                problems.push(format!("attachment {name}: forwarded too deep, not opened"));
                continue;
            }
            out.heading(
                1,
                &format!("Attachment: {}", inner.subject().unwrap_or(&name)),
            );
            write_message(inner, options, out, parts, problems, depth + 1);
            continue;
        }
        let Some(media) = MediaType::from_key(&name).filter(|m| *m != MediaType::Email) else {
            continue;
        };
        match extract_with(part.contents(), media, options) {
            Ok(doc) => parts.push(Part { name, media, doc }),
            Err(ExtractError::Skip(_)) => {}
            Err(ExtractError::Invalid(reason)) => {
                problems.push(format!("attachment {name}: {reason}"))
            }
        }
    }
}
