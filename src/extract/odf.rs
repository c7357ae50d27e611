//! OpenDocument (ODT, ODP, ODS) -> Markdown from `content.xml`: ODT headings by outline
//! level and tables as Markdown tables; ODP pages as slides (number as page, title frame
//! as heading); ODS tables as sheets with their header row.
//!
//! Invariant: repeated rows and columns (`number-rows-repeated`) are never expanded
//! beyond the cells that hold text, so a sheet claiming a million empty rows costs nothing.

use super::archive::Archive;
use super::markdown::MarkdownWriter;
use super::sheet::{self, SparseSheet, MAX_CELLS};
use super::xml::{element_text, events, walk, XmlEvent};
use super::{ExtractError, Extracted};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Presentation,
    Spreadsheet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "ODT",
            Kind::Presentation => "ODP",
            Kind::Spreadsheet => "ODS",
        }
    }
}

pub fn extract(bytes: &[u8], kind: Kind) -> Result<Extracted, ExtractError> {
    let mut archive = Archive::open(bytes, kind.name())?;
    let title = match archive.read("meta.xml")? {
        Some(xml) => element_text(&events(&xml, "meta.xml")?, "title"),
        None => None,
    };
    let content = archive.require("content.xml")?;
    match kind {
        Kind::Spreadsheet => sheet::render(read_sheets(&content)?, title),
        Kind::Text | Kind::Presentation => {
            let mut out = MarkdownWriter::default();
            let mut reader = Flow::new(kind);
            walk(&content, "content.xml", |event| {
                reader.visit(event, &mut out);
                Ok(())
            })?;
            out.finish(title, None)
        }
    }
}

/// Text inside a paragraph: spans, links, `<text:s text:c="3"/>` spaces, tabs, breaks.
#[derive(Default)]
struct Inline {
    text: String,
    /// Inside a note's citation mark or an annotation: not part of the running text.
    skipping: usize,
}

impl Inline {
    fn open(&mut self, el: &super::xml::Element) {
        match el.name.as_str() {
            "s" => {
                let n = el
                    .attr("text:c")
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(1);
                self.text.push_str(&" ".repeat(n.min(64)));
            }
            "tab" => self.text.push('\t'),
            "line-break" => self.text.push('\n'),
            "note-citation" | "annotation" | "tracked-changes" => self.skipping += 1,
            _ => {}
        }
    }

    fn close(&mut self, name: &str) {
        if matches!(name, "note-citation" | "annotation" | "tracked-changes") {
            self.skipping = self.skipping.saturating_sub(1);
        }
    }

    fn push(&mut self, text: &str) {
        if self.skipping == 0 {
            self.text.push_str(text);
        }
    }
}

/// The running text of an ODT or ODP.
struct Flow {
    kind: Kind,
    inline: Inline,
    /// Depth of open paragraphs/headings (a frame in a paragraph nests another).
    open_paragraphs: usize,
    heading: Option<usize>,
    tables: Vec<(Vec<Vec<String>>, Vec<String>, String)>,
    page: u32,
    /// ODP: the page's title frame is open, its text is the slide heading.
    in_title_frame: bool,
    slide_title: String,
    slide_body: Vec<String>,
    in_notes: usize,
}

impl Flow {
    fn new(kind: Kind) -> Self {
        Flow {
            kind,
            inline: Inline::default(),
            open_paragraphs: 0,
            heading: None,
            tables: Vec::new(),
            page: 0,
            in_title_frame: false,
            slide_title: String::new(),
            slide_body: Vec::new(),
            in_notes: 0,
        }
    }

    fn visit(&mut self, event: XmlEvent, out: &mut MarkdownWriter) {
        match event {
            XmlEvent::Open(el) => match el.name.as_str() {
                "notes" => self.in_notes += 1,
                "page" if self.kind == Kind::Presentation => {
                    self.page += 1;
                    self.slide_title.clear();
                    self.slide_body.clear();
                }
                "frame" if self.kind == Kind::Presentation => {
                    self.in_title_frame = matches!(el.attr("presentation:class"), Some("title"));
                }
                "h" | "p" => {
                    self.open_paragraphs += 1;
                    if self.open_paragraphs == 1 {
                        self.inline.text.clear();
                        self.heading = (el.name == "h").then(|| {
                            el.attr("text:outline-level")
                                .and_then(|l| l.parse::<usize>().ok())
                                .unwrap_or(1)
                        });
                    }
                }
                "table" => self.tables.push(Default::default()),
                "table-cell" | "covered-table-cell" => {
                    if let Some((_, _, cell)) = self.tables.last_mut() {
                        cell.clear();
                    }
                }
                _ => self.inline.open(&el),
            },
            XmlEvent::Text(text) => {
                if self.open_paragraphs > 0 {
                    self.inline.push(&text);
                }
            }
            XmlEvent::Close(name) => match name.as_str() {
                "notes" => self.in_notes = self.in_notes.saturating_sub(1),
                "frame" => self.in_title_frame = false,
                "h" | "p" => {
                    self.open_paragraphs = self.open_paragraphs.saturating_sub(1);
                    if self.open_paragraphs > 0 {
                        return;
                    }
                    let text = std::mem::take(&mut self.inline.text);
                    self.paragraph_done(text, out);
                }
                "table-cell" | "covered-table-cell" => {
                    if let Some((_, row, cell)) = self.tables.last_mut() {
                        row.push(std::mem::take(cell));
                    }
                }
                "table-row" => {
                    if let Some((rows, row, _)) = self.tables.last_mut() {
                        rows.push(std::mem::take(row));
                    }
                }
                "table" => {
                    let Some((rows, _, _)) = self.tables.pop() else {
                        return;
                    };
                    match self.tables.last_mut() {
                        Some((_, _, cell)) => {
                            let flat: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
                            if !cell.is_empty() {
                                cell.push(' ');
                            }
                            cell.push_str(&flat.join("; "));
                        }
                        None if self.kind == Kind::Presentation => {
                            let flat: Vec<String> = rows.iter().map(|r| r.join(" | ")).collect();
                            self.slide_body.push(flat.join("\n"));
                        }
                        None => out.table(&rows),
                    }
                }
                "page" if self.kind == Kind::Presentation => {
                    out.page(self.page);
                    let title = if self.slide_title.trim().is_empty() {
                        format!("Slide {}", self.page)
                    } else {
                        self.slide_title.clone()
                    };
                    out.heading(1, &title);
                    for block in self.slide_body.drain(..) {
                        out.paragraph(&block);
                    }
                }
                name => self.inline.close(name),
            },
        }
    }

    fn paragraph_done(&mut self, text: String, out: &mut MarkdownWriter) {
        if self.in_notes > 0 {
            return;
        }
        if let Some((_, _, cell)) = self.tables.last_mut() {
            if !cell.is_empty() {
                cell.push(' ');
            }
            cell.push_str(&text);
            return;
        }
        match self.kind {
            Kind::Presentation if self.in_title_frame => {
                if !self.slide_title.is_empty() {
                    self.slide_title.push(' ');
                }
                self.slide_title.push_str(&text);
            }
            Kind::Presentation => self.slide_body.push(text),
            _ => match self.heading.take() {
                Some(level) => out.heading(level, &text),
                None => out.paragraph(&text),
            },
        }
    }
}

/// ODS sheets as sparse cells: repeats advance the position without being expanded.
fn read_sheets(content: &[u8]) -> Result<Vec<(String, SparseSheet)>, ExtractError> {
    let mut sheets: Vec<(String, SparseSheet)> = Vec::new();
    let (mut row, mut col) = (0u64, 0u64);
    let (mut row_repeat, mut col_repeat) = (1u64, 1u64);
    let mut depth = 0usize;
    let mut inline = Inline::default();
    let mut in_cell = false;
    let mut paragraphs = 0usize;
    let mut cells = 0usize;
    walk(content, "content.xml", |event| {
        match event {
            XmlEvent::Open(el) => match el.name.as_str() {
                "table" => {
                    depth += 1;
                    if depth == 1 {
                        sheets.push((
                            el.attr("table:name").unwrap_or("Sheet").to_string(),
                            SparseSheet::new(),
                        ));
                        row = 0;
                    }
                }
                "table-row" if depth == 1 => {
                    col = 0;
                    row_repeat = repeat(&el, "table:number-rows-repeated");
                }
                "table-cell" | "covered-table-cell" if depth == 1 => {
                    in_cell = true;
                    inline.text.clear();
                    col_repeat = repeat(&el, "table:number-columns-repeated");
                }
                "p" | "h" if in_cell => {
                    if !inline.text.is_empty() {
                        inline.text.push('\n');
                    }
                    paragraphs += 1;
                }
                _ => inline.open(&el),
            },
            XmlEvent::Text(text) if in_cell && paragraphs > 0 => inline.push(&text),
            XmlEvent::Text(_) => {}
            XmlEvent::Close(name) => match name.as_str() {
                "table" => depth = depth.saturating_sub(1),
                "p" | "h" if in_cell => paragraphs = paragraphs.saturating_sub(1),
                "table-cell" | "covered-table-cell" if depth == 1 && in_cell => {
                    in_cell = false;
                    let text = std::mem::take(&mut inline.text);
                    if !text.trim().is_empty() {
                        // A repeated cell with text repeats its text, within the cap.
                        let (_, sheet) = sheets.last_mut().expect("a cell is inside a table");
                        for r in 0..row_repeat {
                            for c in 0..col_repeat {
                                cells += 1;
                                if cells > MAX_CELLS {
                                    return Err(sheet::too_many_cells("ODS"));
                                }
                                sheet
                                    .entry(clamp(row + r))
                                    .or_default()
                                    .insert(clamp(col + c), text.clone());
                            }
                        }
                    }
                    col = col.saturating_add(col_repeat);
                }
                "table-row" if depth == 1 => row = row.saturating_add(row_repeat),
                name => inline.close(name),
            },
        }
        Ok(())
    })?;
    Ok(sheets)
}

fn repeat(el: &super::xml::Element, attr: &str) -> u64 {
    el.attr(attr)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, u32::MAX as u64)
}

fn clamp(n: u64) -> u32 {
    n.min(u32::MAX as u64) as u32
}
