//! PPTX -> Markdown, one section per slide in presentation order: the slide number is the
//! page and the slide title the heading; body text and tables follow.
//!
//! Invariant: slides are taken in the order the presentation lists them, never by file
//! name, and a slide that cannot be found is named in the document's warning.

use std::collections::HashMap;

use super::archive::{resolve, Archive};
use super::markdown::MarkdownWriter;
use super::xml::{events, walk, XmlEvent};
use super::{ExtractError, Extracted};

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let mut archive = Archive::open(bytes, "PPTX")?;
    let presentation = archive.require("ppt/presentation.xml")?;
    let rels = match archive.read("ppt/_rels/presentation.xml.rels")? {
        Some(xml) => relationships(&xml, "ppt/_rels/presentation.xml.rels")?,
        None => HashMap::new(),
    };
    let mut slide_paths = Vec::new();
    for event in events(&presentation, "ppt/presentation.xml")? {
        if let XmlEvent::Open(el) = event {
            if el.name == "sldId" {
                if let Some(target) = el.attr("r:id").and_then(|id| rels.get(id)) {
                    slide_paths.push(resolve("ppt", target));
                }
            }
        }
    }
    let title = match archive.read("docProps/core.xml")? {
        Some(xml) => super::docx::core_title(&xml)?,
        None => None,
    };
    let mut out = MarkdownWriter::default();
    let mut missing = Vec::new();
    for (index, path) in slide_paths.iter().enumerate() {
        let number = index as u32 + 1;
        let Some(xml) = archive.read(path)? else {
            missing.push(number.to_string());
            continue;
        };
        let slide = read_slide(&xml, path)?;
        out.page(number);
        let heading = slide
            .title
            .clone()
            .unwrap_or_else(|| format!("Slide {number}"));
        out.heading(1, &heading);
        for block in slide.blocks {
            match block {
                Block::Text(text) => out.paragraph(&text),
                Block::Table(rows) => out.table(&rows),
            }
        }
    }
    let warning = (!missing.is_empty())
        .then(|| format!("slides missing from the file: {}", missing.join(", ")));
    out.finish(title, warning)
}

/// `Id -> Target` of an OOXML relationships part.
pub(super) fn relationships(
    xml: &[u8],
    what: &str,
) -> Result<HashMap<String, String>, ExtractError> {
    let mut map = HashMap::new();
    for event in events(xml, what)? {
        if let XmlEvent::Open(el) = event {
            if el.name == "Relationship" {
                if let (Some(id), Some(target)) = (el.attr("Id"), el.attr("Target")) {
                    map.insert(id.to_string(), target.to_string());
                }
            }
        }
    }
    Ok(map)
}

enum Block {
    Text(String),
    Table(Vec<Vec<String>>),
}

struct Slide {
    title: Option<String>,
    blocks: Vec<Block>,
}

/// A slide's shapes in order: the title placeholder's text becomes the title, every other
/// shape's paragraphs a text block, graphic-frame tables a table.
fn read_slide(xml: &[u8], path: &str) -> Result<Slide, ExtractError> {
    let mut title = None;
    let mut blocks = Vec::new();
    let mut shape_is_title = false;
    let mut shape_text: Vec<String> = Vec::new();
    let mut paragraph = String::new();
    let mut in_text = false;
    let mut table: Option<(Vec<Vec<String>>, Vec<String>, String)> = None;
    let mut shape_depth = 0usize;
    walk(xml, path, |event| {
        match event {
            XmlEvent::Open(el) => match el.name.as_str() {
                "sp" => {
                    shape_depth += 1;
                    if shape_depth == 1 {
                        shape_is_title = false;
                        shape_text.clear();
                    }
                }
                "ph" => {
                    if matches!(el.attr("type"), Some("title" | "ctrTitle")) {
                        shape_is_title = true;
                    }
                }
                "tbl" => table = Some((Vec::new(), Vec::new(), String::new())),
                "p" => paragraph.clear(),
                "t" => in_text = true,
                "br" => paragraph.push('\n'),
                _ => {}
            },
            XmlEvent::Text(text) if in_text => paragraph.push_str(&text),
            XmlEvent::Text(_) => {}
            XmlEvent::Close(name) => match name.as_str() {
                "t" => in_text = false,
                "p" => {
                    let text = std::mem::take(&mut paragraph);
                    if let Some((_, _, cell)) = table.as_mut() {
                        if !cell.is_empty() {
                            cell.push(' ');
                        }
                        cell.push_str(&text);
                    } else {
                        shape_text.push(text);
                    }
                }
                "tc" => {
                    if let Some((_, row, cell)) = table.as_mut() {
                        row.push(std::mem::take(cell));
                    }
                }
                "tr" => {
                    if let Some((rows, row, _)) = table.as_mut() {
                        rows.push(std::mem::take(row));
                    }
                }
                "tbl" => {
                    if let Some((rows, _, _)) = table.take() {
                        blocks.push(Block::Table(rows));
                    }
                }
                "sp" => {
                    shape_depth = shape_depth.saturating_sub(1);
                    if shape_depth == 0 {
                        let text = shape_text.join("\n");
                        if shape_is_title && title.is_none() && !text.trim().is_empty() {
                            title = Some(text);
                        } else if !text.trim().is_empty() {
                            blocks.push(Block::Text(text));
                        }
                        shape_text.clear();
                    }
                }
                _ => {}
            },
        }
        Ok(())
    })?;
    Ok(Slide { title, blocks })
}
