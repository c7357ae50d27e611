//! DOCX -> Markdown: paragraphs in order, headings from paragraph styles (and outline
//! levels) as the heading path, tables as Markdown tables.
//!
//! Invariant: text is read from `word/document.xml` only as written (deleted revisions,
//! field codes and drawings' alt text stay out); nesting of any depth costs no recursion.

use std::collections::HashMap;

use super::archive::Archive;
use super::markdown::MarkdownWriter;
use super::xml::{element_text, events, walk, XmlEvent};
use super::{ExtractError, Extracted};

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let mut archive = Archive::open(bytes, "DOCX")?;
    let heading_styles = match archive.read("word/styles.xml")? {
        Some(xml) => heading_levels(&xml)?,
        None => HashMap::new(),
    };
    let title = match archive.read("docProps/core.xml")? {
        Some(xml) => core_title(&xml)?,
        None => None,
    };
    let document = archive.require("word/document.xml")?;
    let mut out = MarkdownWriter::default();
    let mut state = Body::default();
    walk(&document, "word/document.xml", |event| {
        state.visit(event, &heading_styles, &mut out);
        Ok(())
    })?;
    out.finish(title, None)
}

/// Heading level by style id: "heading N" styles, a Title style (level 1), and any style
/// with an outline level, directly or through the style it is based on.
fn heading_levels(styles: &[u8]) -> Result<HashMap<String, usize>, ExtractError> {
    struct Style {
        name: String,
        based_on: Option<String>,
        outline: Option<usize>,
    }
    let mut styles_by_id: HashMap<String, Style> = HashMap::new();
    let mut current: Option<String> = None;
    for event in events(styles, "word/styles.xml")? {
        match event {
            XmlEvent::Open(el) if el.name == "style" => {
                let id = el.attr("w:styleId").unwrap_or_default().to_string();
                styles_by_id.insert(
                    id.clone(),
                    Style {
                        name: String::new(),
                        based_on: None,
                        outline: None,
                    },
                );
                current = Some(id);
            }
            XmlEvent::Close(name) if name == "style" => current = None,
            XmlEvent::Open(el) => {
                let Some(style) = current.as_ref().and_then(|id| styles_by_id.get_mut(id)) else {
                    continue;
                };
                let value = el.attr("w:val").unwrap_or_default();
                match el.name.as_str() {
                    "name" => style.name = value.to_ascii_lowercase(),
                    "basedOn" => style.based_on = Some(value.to_string()),
                    "outlineLvl" => style.outline = value.parse::<usize>().ok().filter(|l| *l < 9),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let own_level = |style: &Style| -> Option<usize> {
        if style.name == "title" {
            return Some(1);
        }
        if let Some(n) = style.name.strip_prefix("heading ") {
            return n
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=9).contains(n));
        }
        style.outline.map(|l| l + 1)
    };
    let mut levels = HashMap::new();
    for id in styles_by_id.keys() {
        let mut at = id.as_str();
        for _ in 0..16 {
            let Some(style) = styles_by_id.get(at) else {
                break;
            };
            if let Some(level) = own_level(style) {
                levels.insert(id.clone(), level);
                break;
            }
            match &style.based_on {
                Some(base) => at = base,
                None => break,
            }
        }
    }
    Ok(levels)
}

/// `dc:title` of `docProps/core.xml` (DOCX and PPTX).
pub(super) fn core_title(core: &[u8]) -> Result<Option<String>, ExtractError> {
    Ok(element_text(&events(core, "docProps/core.xml")?, "title"))
}

/// A table being read: finished rows, the row and cell in progress.
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
    row: Vec<String>,
    cell: String,
}

/// A paragraph being read: its text and heading level.
#[derive(Default)]
struct Paragraph {
    text: String,
    level: Option<usize>,
}

#[derive(Default)]
struct Body {
    paragraphs: Vec<Paragraph>,
    tables: Vec<Table>,
    in_text: bool,
    /// Inside a field's instruction, a deleted run or a drawing: text that is not read.
    skipping: usize,
}

impl Body {
    fn visit(
        &mut self,
        event: XmlEvent,
        styles: &HashMap<String, usize>,
        out: &mut MarkdownWriter,
    ) {
        match event {
            XmlEvent::Open(el) => match el.name.as_str() {
                "instrText" | "delText" | "del" | "drawing" | "pict" | "object" => {
                    self.skipping += 1
                }
                "p" => self.paragraphs.push(Paragraph::default()),
                "pStyle" => {
                    if let (Some(p), Some(id)) = (self.paragraphs.last_mut(), el.attr("w:val")) {
                        p.level = styles.get(id).copied().or(p.level);
                    }
                }
                "outlineLvl" => {
                    if let Some(p) = self.paragraphs.last_mut() {
                        p.level = el
                            .attr("w:val")
                            .and_then(|v| v.parse::<usize>().ok())
                            .filter(|l| *l < 9)
                            .map(|l| l + 1)
                            .or(p.level);
                    }
                }
                "t" => self.in_text = true,
                "tab" => self.push_text("\t"),
                "br" | "cr" => self.push_text("\n"),
                "tbl" => self.tables.push(Table::default()),
                "tr" => {
                    if let Some(t) = self.tables.last_mut() {
                        t.row.clear();
                    }
                }
                "tc" => {
                    if let Some(t) = self.tables.last_mut() {
                        t.cell.clear();
                    }
                }
                _ => {}
            },
            XmlEvent::Text(text) => {
                if self.in_text && self.skipping == 0 {
                    self.push_text(&text);
                }
            }
            XmlEvent::Close(name) => match name.as_str() {
                "instrText" | "delText" | "del" | "drawing" | "pict" | "object" => {
                    self.skipping = self.skipping.saturating_sub(1)
                }
                "t" => self.in_text = false,
                "p" => {
                    let Some(p) = self.paragraphs.pop() else {
                        return;
                    };
                    if let Some(outer) = self.paragraphs.last_mut() {
                        // A text box inside a paragraph: its text joins the paragraph.
                        outer.text.push(' ');
                        outer.text.push_str(&p.text);
                    } else if let Some(table) = self.tables.last_mut() {
                        if !table.cell.is_empty() {
                            table.cell.push(' ');
                        }
                        table.cell.push_str(&p.text);
                    } else if let Some(level) = p.level {
                        out.heading(level, &p.text);
                    } else {
                        out.paragraph(&p.text);
                    }
                }
                "tc" => {
                    if let Some(t) = self.tables.last_mut() {
                        let cell = std::mem::take(&mut t.cell);
                        t.row.push(cell);
                    }
                }
                "tr" => {
                    if let Some(t) = self.tables.last_mut() {
                        let row = std::mem::take(&mut t.row);
                        t.rows.push(row);
                    }
                }
                "tbl" => {
                    let Some(table) = self.tables.pop() else {
                        return;
                    };
                    match self.tables.last_mut() {
                        // A table in a table's cell: its rows become that cell's text.
                        Some(outer) => {
                            let flat: Vec<String> =
                                table.rows.iter().map(|row| row.join(" ")).collect();
                            if !outer.cell.is_empty() {
                                outer.cell.push(' ');
                            }
                            outer.cell.push_str(&flat.join("; "));
                        }
                        None => out.table(&table.rows),
                    }
                }
                _ => {}
            },
        }
    }

    fn push_text(&mut self, text: &str) {
        if self.skipping > 0 {
            return;
        }
        if let Some(p) = self.paragraphs.last_mut() {
            p.text.push_str(text);
        } else if let Some(t) = self.tables.last_mut() {
            t.cell.push_str(text);
        }
    }
}
