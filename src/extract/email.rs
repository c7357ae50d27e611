//! Email (`.eml`, RFC 5322/MIME) -> the message's text and HTML bodies, with subject,
//! sender, recipients and date as payload fields, and attachments of supported types
//! appended as sections of their own (`Attachment: name`).
//!
//! Invariant: attachments are read by the same extractors as files, to a bounded depth
//! of forwarded messages, and one that cannot be read is named in the warning, never
//! indexed as bytes.

use mail_parser::{Address, MessageParser, MimeHeaders, PartType};

use super::markdown::MarkdownWriter;
use super::{extract as extract_any, ExtractError, Extracted, MediaType};

/// Forwarded messages inside forwarded messages: deeper ones are not opened.
const MAX_DEPTH: usize = 3;

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let message = MessageParser::default().parse(bytes).ok_or_else(|| {
        ExtractError::Invalid("not a readable email message (no headers); exclude it".into())
    })?;
    let mut out = MarkdownWriter::default();
    let mut problems = Vec::new();
    write_message(&message, &mut out, &mut problems, 0);
    let subject = message.subject().map(str::to_string);
    let mut doc = out.finish(
        subject.clone(),
        (!problems.is_empty()).then(|| problems.join("; ")),
    )?;
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
    out: &mut MarkdownWriter,
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
            write_message(inner, out, problems, depth + 1);
            continue;
        }
        let Some(media) = MediaType::from_key(&name).filter(|m| *m != MediaType::Email) else {
            continue;
        };
        match extract_any(part.contents(), media) {
            Ok(doc) => {
                out.heading(1, &format!("Attachment: {name}"));
                if media.is_markdown_like() {
                    out.markdown(&demote_headings(&doc.text));
                } else {
                    out.paragraph(&doc.text);
                }
            }
            Err(ExtractError::Skip(_)) => {}
            Err(ExtractError::Invalid(reason)) => {
                problems.push(format!("attachment {name}: {reason}"))
            }
        }
    }
}

/// Moves an attachment's headings one level down, under its `Attachment:` heading.
fn demote_headings(markdown: &str) -> String {
    let sections = super::markdown_sections(markdown);
    let mut out = String::with_capacity(markdown.len() + sections.len());
    let mut last = 0;
    for (start, _) in sections {
        out.push_str(&markdown[last..start]);
        if markdown[start..].starts_with("######") {
            last = start;
        } else {
            out.push('#');
            last = start;
        }
    }
    out.push_str(&markdown[last..]);
    out
}
