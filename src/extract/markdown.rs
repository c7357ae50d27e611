//! Builds a structured document's text as Markdown: headings as `#` lines, tables as
//! Markdown tables, page (slide) starts recorded as they are written.
//!
//! Invariant: every piece is normalized before it is appended and nothing is rewritten
//! afterwards, so the page offsets recorded stay exact and on `char` boundaries.

use super::text::normalize;
use super::{markdown_sections, ExtractError, Extracted};

#[derive(Default)]
pub(super) struct MarkdownWriter {
    text: String,
    page_starts: Vec<(usize, u32)>,
    pending_page: Option<u32>,
}

impl MarkdownWriter {
    /// Marks where a page (slide, sheet) begins: at the next piece written.
    pub fn page(&mut self, number: u32) {
        self.pending_page = Some(number);
    }

    pub fn heading(&mut self, level: usize, text: &str) {
        let text = one_line(text);
        if text.is_empty() {
            return;
        }
        let level = level.clamp(1, 6);
        self.block(&format!("{} {text}", "#".repeat(level)));
    }

    /// A paragraph: whitespace collapsed, line breaks kept; a line that would read as a
    /// heading or a fence is escaped.
    pub fn paragraph(&mut self, text: &str) {
        let text = normalize(text, true);
        if text.trim().is_empty() {
            return;
        }
        let escaped: Vec<String> = text
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                if trimmed.starts_with('#')
                    || trimmed.starts_with("```")
                    || trimmed.starts_with("~~~")
                {
                    format!("\\{trimmed}")
                } else {
                    line.to_string()
                }
            })
            .collect();
        self.block(&escaped.join("\n"));
    }

    /// A table; its first row is the header. Cells become one line each, pipes escaped.
    pub fn table(&mut self, rows: &[Vec<String>]) {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|cell| one_line(cell).replace('|', "\\|"))
                    .collect()
            })
            .filter(|row: &Vec<String>| row.iter().any(|c| !c.is_empty()))
            .collect();
        let Some(width) = rows.iter().map(Vec::len).max() else {
            return;
        };
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            out.push('|');
            for col in 0..width {
                out.push(' ');
                out.push_str(row.get(col).map(String::as_str).unwrap_or(""));
                out.push_str(" |");
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                out.push_str(&" --- |".repeat(width));
                out.push('\n');
            }
        }
        self.block(out.trim_end());
    }

    /// Markdown another extractor produced (already normalized), appended as it is.
    pub fn markdown(&mut self, markdown: &str) {
        if !markdown.trim().is_empty() {
            self.block(markdown.trim_end());
        }
    }

    fn block(&mut self, block: &str) {
        if !self.text.is_empty() {
            self.text.push_str("\n\n");
        }
        if let Some(page) = self.pending_page.take() {
            self.page_starts.push((self.text.len(), page));
        }
        self.text.push_str(block);
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The document, titled by `title` or else its first top-level heading.
    pub fn finish(
        self,
        title: Option<String>,
        decode_warning: Option<String>,
    ) -> Result<Extracted, ExtractError> {
        let sections = markdown_sections(&self.text);
        let title = title
            .map(|t| one_line(&t))
            .filter(|t| !t.is_empty())
            .or_else(|| {
                sections
                    .iter()
                    .find(|(_, p)| p.len() == 1)
                    .map(|(_, p)| p[0].clone())
            });
        Ok(Extracted {
            text: self.text,
            page_starts: self.page_starts,
            sections,
            title,
            decode_warning,
            metadata: Default::default(),
            parts: Vec::new(),
        })
    }
}

/// Text on one line, whitespace collapsed.
pub(super) fn one_line(text: &str) -> String {
    normalize(text, true)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_tables_and_pages_keep_exact_offsets() {
        let mut w = MarkdownWriter::default();
        w.page(1);
        w.heading(1, "Report\n 2024");
        w.paragraph("# not a heading\nsecond   line");
        w.page(2);
        w.table(&[
            vec!["Name".into(), "Role".into()],
            vec!["Ada".into(), "a|b".into()],
            vec!["".into(), "".into()],
        ]);
        let doc = w.finish(None, None).unwrap();
        assert_eq!(
            doc.text,
            "# Report 2024\n\n\\# not a heading\nsecond line\n\n| Name | Role |\n| --- | --- |\n| Ada | a\\|b |"
        );
        assert_eq!(doc.title.as_deref(), Some("Report 2024"));
        let table_at = doc.text.find("| Name").unwrap();
        assert_eq!(doc.page_starts, vec![(0, 1), (table_at, 2)]);
        assert_eq!(doc.heading_path_at(table_at), ["Report 2024"]);
    }
}
