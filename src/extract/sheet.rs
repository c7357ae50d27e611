//! Spreadsheets (XLSX, XLS through calamine; ODS through the OpenDocument reader) ->
//! one section per sheet, headed by the sheet name, each row written with its header row
//! (`Name: Ada; Role: engineer`) so that a chunk cut from the middle still says what its
//! values are.
//!
//! Invariant: memory follows the cells that hold something, never the sheet's claimed
//! dimensions: a sheet with one cell at A1 and one at XFD1048576 costs two cells.

use std::collections::BTreeMap;
use std::io::Cursor;

use calamine::{Data, Reader, Xls, Xlsx};

use super::archive::Archive;
use super::markdown::MarkdownWriter;
use super::{ExtractError, Extracted};

/// More cells with content than a document store's spreadsheet plausibly holds as prose.
pub(super) const MAX_CELLS: usize = 2_000_000;

/// Cells with content of one sheet, by row then column.
pub(super) type SparseSheet = BTreeMap<u32, BTreeMap<u32, String>>;

pub fn extract_xlsx(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    // calamine inflates members itself, unbounded: the container is checked first.
    Archive::open(bytes, "XLSX")?.check_all()?;
    let mut workbook: Xlsx<_> =
        Xlsx::new(Cursor::new(bytes)).map_err(|err| invalid("XLSX", &err))?;
    let mut sheets = Vec::new();
    let mut cells_total = 0usize;
    for name in workbook.sheet_names() {
        let mut cells = SparseSheet::new();
        let mut reader = workbook
            .worksheet_cells_reader(&name)
            .map_err(|err| invalid("XLSX", &err))?;
        while let Some(cell) = reader.next_cell().map_err(|err| invalid("XLSX", &err))? {
            let text = Data::from(cell.get_value().clone()).to_string();
            if text.trim().is_empty() {
                continue;
            }
            cells_total += 1;
            if cells_total > MAX_CELLS {
                return Err(too_many_cells("XLSX"));
            }
            let (row, col) = cell.get_position();
            cells.entry(row).or_default().insert(col, text);
        }
        sheets.push((name, cells));
    }
    render(sheets, None)
}

pub fn extract_xls(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    // The BIFF format itself caps a sheet at 65,536 x 256 cells, which bounds what
    // calamine's dense range can cost.
    let mut workbook: Xls<_> = Xls::new(Cursor::new(bytes)).map_err(|err| invalid("XLS", &err))?;
    let mut sheets = Vec::new();
    let mut cells_total = 0usize;
    for name in workbook.sheet_names() {
        let range = workbook
            .worksheet_range(&name)
            .map_err(|err| invalid("XLS", &err))?;
        let mut cells = SparseSheet::new();
        let (r0, c0) = range.start().unwrap_or((0, 0));
        for (row, col, value) in range.used_cells() {
            if matches!(value, Data::Empty) {
                continue;
            }
            let text = value.to_string();
            if text.trim().is_empty() {
                continue;
            }
            cells_total += 1;
            if cells_total > MAX_CELLS {
                return Err(too_many_cells("XLS"));
            }
            cells
                .entry(r0 + row as u32)
                .or_default()
                .insert(c0 + col as u32, text);
        }
        sheets.push((name, cells));
    }
    render(sheets, None)
}

/// Writes sheets in workbook order: the sheet name as a heading, the first row with
/// content as the header, each later row as `header: value` pairs.
pub(super) fn render(
    sheets: Vec<(String, SparseSheet)>,
    title: Option<String>,
) -> Result<Extracted, ExtractError> {
    let mut out = MarkdownWriter::default();
    for (name, cells) in sheets {
        let mut rows = cells.into_values();
        let Some(header) = rows.next() else {
            continue;
        };
        out.heading(1, &name);
        let header_line: Vec<&str> = header.values().map(String::as_str).collect();
        out.paragraph(&header_line.join(" | "));
        let mut lines = Vec::new();
        for row in rows {
            let pairs: Vec<String> = row
                .iter()
                .map(|(col, value)| match header.get(col) {
                    Some(label) => format!("{label}: {value}"),
                    None => format!("{}: {value}", column_name(*col)),
                })
                .collect();
            lines.push(pairs.join("; "));
        }
        // Rows are paragraphs of their own so that the chunker can cut between any two.
        for line in lines {
            out.paragraph(&line);
        }
    }
    if out.is_empty() {
        return Err(ExtractError::Skip(
            "spreadsheet has no cells with content".into(),
        ));
    }
    out.finish(title, None)
}

/// `A`, `B`, ..., `Z`, `AA`, ... for a 0-based column.
fn column_name(col: u32) -> String {
    let mut n = col as u64 + 1;
    let mut name = Vec::new();
    while n > 0 {
        let rem = ((n - 1) % 26) as u8;
        name.push(b'A' + rem);
        n = (n - 1) / 26;
    }
    name.reverse();
    String::from_utf8(name).unwrap_or_default()
}

fn invalid(kind: &str, err: &dyn std::fmt::Display) -> ExtractError {
    ExtractError::Invalid(format!(
        "not a readable {kind} workbook ({err}); re-save it or exclude it"
    ))
}

pub(super) fn too_many_cells(kind: &str) -> ExtractError {
    ExtractError::Invalid(format!(
        "{kind} workbook has more than {MAX_CELLS} cells with content; export the part worth searching as CSV, or exclude it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_carry_their_header_and_sheets_their_name() {
        let mut cells = SparseSheet::new();
        cells.entry(0).or_default().insert(0, "Name".into());
        cells.entry(0).or_default().insert(1, "Role".into());
        cells.entry(3).or_default().insert(0, "Ada".into());
        cells.entry(3).or_default().insert(1, "engineer".into());
        cells.entry(4).or_default().insert(2, "stray".into());
        let doc = render(
            vec![
                ("Staff".into(), cells),
                ("Empty".into(), SparseSheet::new()),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            doc.text,
            "# Staff\n\nName | Role\n\nName: Ada; Role: engineer\n\nC: stray"
        );
        assert_eq!(doc.heading_path_at(doc.text.len() - 1), ["Staff"]);
        assert_eq!(column_name(0), "A");
        assert_eq!(column_name(27), "AB");
    }
}
