//! Reading order for a PDF page: a page set in columns is cut into blocks (recursive
//! XY-cut) and read column by column, top down; right-to-left text, which PDF strings
//! store in visual order, is turned back into logical order.
//!
//! Invariant: a page without columns keeps its content-stream text exactly as it was. Only a
//! vertical gap with a wide block of several lines of text on each side reorders a page,
//! and then every piece of text is kept, once, with the spacing it had where its pieces
//! stay neighbours.

/// Where one shown string sits: its baseline's horizontal extent and height, and its
/// font size, all in page space (y up). Text that is rotated, mirrored or vertical has
/// no place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Place {
    pub x0: f64,
    pub x1: f64,
    pub baseline: f64,
    pub size: f64,
}

/// The page text one show operator produced: its byte range in the page's text.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    pub start: usize,
    pub end: usize,
    pub place: Option<Place>,
}

/// A block of text cannot be a column narrower than this many ems (a table's key column
/// or a margin note is not one).
const MIN_COLUMN_EMS: f64 = 10.0;
/// A column holds at least this many lines beside the other.
const MIN_COLUMN_LINES: usize = 3;
/// The white gap between columns is at least this wide, in ems.
const MIN_GUTTER_EMS: f64 = 0.5;
/// Pages with more pieces than this keep their content order (the cut is quadratic).
const MAX_SEGMENTS: usize = 5_000;
/// Nesting of cuts deeper than this leaves the rest in content order.
const MAX_DEPTH: usize = 64;

/// A run of shown strings on one baseline with no wide gap inside.
#[derive(Clone, Copy, Debug)]
struct Segment {
    start: usize,
    end: usize,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    baseline: f64,
    size: f64,
}

/// The page text in column order, or `None` where the page has no columns (or pieces
/// without a place), so the content order stands.
pub(super) fn column_order(text: &str, spans: &[Span]) -> Option<String> {
    let segments = segments(text, spans)?;
    if segments.len() < 2 * MIN_COLUMN_LINES || segments.len() > MAX_SEGMENTS {
        return None;
    }
    let mut order = Vec::with_capacity(segments.len());
    let mut columns = false;
    cut(
        &segments,
        (0..segments.len()).collect(),
        0,
        &mut order,
        &mut columns,
    );
    if !columns || order.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    for (k, &i) in order.iter().enumerate() {
        let segment = &segments[i];
        if k > 0 {
            let previous = order[k - 1];
            // Neighbours in the content order keep what stood between them; elsewhere a
            // new block starts a new line.
            if previous + 1 == i {
                out.push_str(&text[segments[previous].end..segment.start]);
            } else {
                out.push('\n');
            }
        }
        out.push_str(&text[segment.start..segment.end]);
    }
    Some(out)
}

/// Shown strings joined into runs along a line; a line break in the text, a change of
/// baseline or a gap wider than an em starts a new one.
fn segments(text: &str, spans: &[Span]) -> Option<Vec<Segment>> {
    // Ranges out of order or off the text mean the walk lost track: keep content order.
    let mut reached = 0;
    for span in spans {
        if span.start < reached
            || span.end < span.start
            || !text.is_char_boundary(span.start)
            || !text.is_char_boundary(span.end)
        {
            return None;
        }
        reached = span.end;
    }
    let mut segments: Vec<Segment> = Vec::new();
    for span in spans.iter().filter(|s| s.end > s.start) {
        let place = span.place?;
        let fresh = Segment {
            start: span.start,
            end: span.end,
            x0: place.x0,
            x1: place.x1,
            y0: place.baseline - 0.25 * place.size,
            y1: place.baseline + 0.85 * place.size,
            baseline: place.baseline,
            size: place.size,
        };
        if let Some(last) = segments.last_mut() {
            let em = last.size.min(place.size);
            let same_line = (place.baseline - last.baseline).abs() <= 0.5 * em;
            let gap = place.x0 - last.x1;
            let broken = text[last.end..span.start].contains('\n');
            if same_line && !broken && gap.abs() <= em {
                last.end = span.end;
                last.x0 = last.x0.min(place.x0);
                last.x1 = last.x1.max(place.x1);
                last.y0 = last.y0.min(fresh.y0);
                last.y1 = last.y1.max(fresh.y1);
                continue;
            }
        }
        segments.push(fresh);
    }
    Some(segments)
}

/// Orders `region` into `out`: a qualifying vertical gap splits it into left and right
/// first; else the widest horizontal gap into top and bottom; a region with neither is
/// a block read in content order.
fn cut(
    segments: &[Segment],
    mut region: Vec<usize>,
    depth: usize,
    out: &mut Vec<usize>,
    columns: &mut bool,
) {
    if region.len() < 2 || depth > MAX_DEPTH {
        region.sort_unstable();
        out.extend(region);
        return;
    }
    let em = median_size(segments, &region);
    if let Some(x) = vertical_cut(segments, &region, em) {
        let (left, right): (Vec<usize>, Vec<usize>) =
            region.into_iter().partition(|&i| segments[i].x1 <= x);
        *columns = true;
        cut(segments, left, depth + 1, out, columns);
        cut(segments, right, depth + 1, out, columns);
        return;
    }
    if let Some(y) = horizontal_cut(segments, &region) {
        let (top, bottom): (Vec<usize>, Vec<usize>) =
            region.into_iter().partition(|&i| segments[i].y0 >= y);
        cut(segments, top, depth + 1, out, columns);
        cut(segments, bottom, depth + 1, out, columns);
        return;
    }
    region.sort_unstable();
    out.extend(region);
}

fn median_size(segments: &[Segment], region: &[usize]) -> f64 {
    let mut sizes: Vec<f64> = region.iter().map(|&i| segments[i].size).collect();
    sizes.sort_by(f64::total_cmp);
    sizes[sizes.len() / 2]
}

/// The middle of the widest white vertical band whose two sides each look like a column.
fn vertical_cut(segments: &[Segment], region: &[usize], em: f64) -> Option<f64> {
    let mut by_x: Vec<&Segment> = region.iter().map(|&i| &segments[i]).collect();
    by_x.sort_by(|a, b| a.x0.total_cmp(&b.x0));
    let mut best: Option<(f64, f64)> = None;
    let mut reach = by_x[0].x1;
    for s in &by_x[1..] {
        let gap = s.x0 - reach;
        if gap >= MIN_GUTTER_EMS * em && best.is_none_or(|(widest, _)| gap > widest) {
            let x = reach + gap / 2.0;
            if is_column(segments, region, em, |s| s.x1 <= x)
                && is_column(segments, region, em, |s| s.x0 >= x)
            {
                best = Some((gap, x));
            }
        }
        reach = reach.max(s.x1);
    }
    best.map(|(_, x)| x)
}

/// Whether the segments `side` picks span enough width and lines to be a column.
fn is_column(
    segments: &[Segment],
    region: &[usize],
    em: f64,
    side: impl Fn(&Segment) -> bool,
) -> bool {
    let chosen: Vec<&Segment> = region
        .iter()
        .map(|&i| &segments[i])
        .filter(|s| side(s))
        .collect();
    let (x0, x1) = chosen
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), s| (a.min(s.x0), b.max(s.x1)));
    if chosen.is_empty() || x1 - x0 < MIN_COLUMN_EMS * em {
        return false;
    }
    let mut baselines: Vec<f64> = chosen.iter().map(|s| s.baseline).collect();
    baselines.sort_by(f64::total_cmp);
    let mut lines = 1;
    for pair in baselines.windows(2) {
        if pair[1] - pair[0] > 0.5 * em {
            lines += 1;
        }
    }
    lines >= MIN_COLUMN_LINES
}

/// The middle of the widest white horizontal band across the region, if any.
fn horizontal_cut(segments: &[Segment], region: &[usize]) -> Option<f64> {
    let mut by_top: Vec<&Segment> = region.iter().map(|&i| &segments[i]).collect();
    by_top.sort_by(|a, b| b.y1.total_cmp(&a.y1));
    let mut best: Option<(f64, f64)> = None;
    let mut floor = by_top[0].y0;
    for s in &by_top[1..] {
        let gap = floor - s.y1;
        if gap > 0.0 && best.is_none_or(|(widest, _)| gap > widest) {
            best = Some((gap, s.y1 + gap / 2.0));
        }
        floor = floor.min(s.y0);
    }
    best.map(|(_, y)| y)
}

/// Whether `c` is a letter of a right-to-left script (Hebrew, Arabic, Syriac, Thaana, NKo
/// and their presentation forms).
fn is_rtl(c: char) -> bool {
    matches!(c,
        '\u{0590}'..='\u{08FF}' | '\u{FB1D}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}')
        && !is_mark(c)
}

/// Combining marks of those scripts, which follow their base letter in logical order.
fn is_mark(c: char) -> bool {
    matches!(c,
        '\u{0591}'..='\u{05BD}' | '\u{05BF}' | '\u{05C1}'..='\u{05C2}' | '\u{05C4}'..='\u{05C5}'
        | '\u{05C7}' | '\u{0610}'..='\u{061A}' | '\u{064B}'..='\u{065F}' | '\u{0670}'
        | '\u{06D6}'..='\u{06DC}' | '\u{06DF}'..='\u{06E4}' | '\u{06E7}'..='\u{06E8}'
        | '\u{06EA}'..='\u{06ED}' | '\u{0300}'..='\u{036F}')
}

/// Page text with each line in logical order (see [`logical_order`]).
pub(super) fn logical_lines(text: String) -> String {
    if !text.chars().any(is_rtl) {
        return text;
    }
    text.split('\n')
        .map(|line| logical_order(line).unwrap_or_else(|| line.to_string()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line of page text in logical order. A PDF's glyphs advance left to right, so its
/// right-to-left text is stored in visual order: each run of right-to-left letters (with
/// the spaces and punctuation between them) is reversed, letter by letter with each
/// letter's marks kept after it; left-to-right text and digits stay as they are (so in a
/// right-to-left line with a Latin word inside, the words read right but the runs on
/// either side of the Latin word keep their visual order). `None` when the line has no
/// right-to-left letters.
pub(super) fn logical_order(text: &str) -> Option<String> {
    if !text.chars().any(is_rtl) {
        return None;
    }
    // Letters with their marks, then runs of those that read right to left.
    let mut clusters: Vec<(bool, String)> = Vec::new();
    for c in text.chars() {
        match clusters.last_mut() {
            Some((_, cluster)) if is_mark(c) => cluster.push(c),
            _ => clusters.push((is_rtl(c), c.to_string())),
        }
    }
    // A neutral (space, punctuation) between two right-to-left letters belongs to their run.
    let strong: Vec<Option<bool>> = clusters
        .iter()
        .map(|(rtl, cluster)| {
            let c = cluster.chars().next().unwrap_or(' ');
            if *rtl {
                Some(true)
            } else if c.is_alphanumeric() {
                Some(false)
            } else {
                None
            }
        })
        .collect();
    // Two passes keep this linear however long the line: the strong direction before
    // each cluster, then after it.
    let mut in_run = vec![false; clusters.len()];
    let mut before = None;
    for (i, s) in strong.iter().enumerate() {
        in_run[i] = s.unwrap_or(before == Some(true));
        before = s.or(before);
    }
    let mut after = None;
    for (i, s) in strong.iter().enumerate().rev() {
        if s.is_none() {
            in_run[i] &= after == Some(true);
        }
        after = s.or(after);
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < clusters.len() {
        if in_run[i] {
            let start = i;
            while i < clusters.len() && in_run[i] {
                i += 1;
            }
            for (_, cluster) in clusters[start..i].iter().rev() {
                out.push_str(cluster);
            }
        } else {
            out.push_str(&clusters[i].1);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out `lines` (x, baseline, text) as the content order shows them, one line
    /// each, 10 pt type with 5 pt per character.
    fn page(lines: &[(f64, f64, &str)]) -> (String, Vec<Span>) {
        let mut text = String::new();
        let mut spans = Vec::new();
        for (x, y, line) in lines {
            if !text.is_empty() {
                text.push('\n');
            }
            let start = text.len();
            text.push_str(line);
            spans.push(Span {
                start,
                end: text.len(),
                place: Some(Place {
                    x0: *x,
                    x1: x + 5.0 * line.chars().count() as f64,
                    baseline: *y,
                    size: 10.0,
                }),
            });
        }
        (text, spans)
    }

    const LEFT: f64 = 72.0;
    const RIGHT: f64 = 320.0;
    /// 40 characters: 200 pt, a column of 20 ems.
    fn line(column: &str, n: usize) -> String {
        format!("{column} column line {n:02} of running prose...")
    }

    #[test]
    fn columns_interleaved_line_by_line_are_read_one_after_the_other() {
        let lines: Vec<(String, String)> = (1..=5)
            .map(|n| (line("left", n), line("right", n)))
            .collect();
        let mut shown = vec![(
            LEFT,
            760.0,
            "A Title Across Both Columns Of The Page, Centred Wide",
        )];
        for (k, (left, right)) in lines.iter().enumerate() {
            let y = 700.0 - 12.0 * k as f64;
            shown.push((LEFT, y, left.as_str()));
            shown.push((RIGHT, y, right.as_str()));
        }
        shown.push((290.0, 40.0, "7"));
        let (text, spans) = page(&shown);
        let ordered = column_order(&text, &spans).expect("two columns");
        let expected: Vec<String> =
            std::iter::once("A Title Across Both Columns Of The Page, Centred Wide".to_string())
                .chain(lines.iter().map(|(l, _)| l.clone()))
                .chain(lines.iter().map(|(_, r)| r.clone()))
                .chain(["7".to_string()])
                .collect();
        assert_eq!(ordered, expected.join("\n"));
    }

    #[test]
    fn a_page_already_in_column_order_or_without_columns_is_left_alone() {
        let mut shown = Vec::new();
        let lefts: Vec<String> = (1..=5).map(|n| line("left", n)).collect();
        let rights: Vec<String> = (1..=5).map(|n| line("right", n)).collect();
        for (k, l) in lefts.iter().enumerate() {
            shown.push((LEFT, 700.0 - 12.0 * k as f64, l.as_str()));
        }
        for (k, r) in rights.iter().enumerate() {
            shown.push((RIGHT, 700.0 - 12.0 * k as f64, r.as_str()));
        }
        let (text, spans) = page(&shown);
        assert_eq!(column_order(&text, &spans), None);

        let single: Vec<String> = (1..=12).map(|n| line("only", n)).collect();
        let shown: Vec<(f64, f64, &str)> = single
            .iter()
            .enumerate()
            .map(|(k, l)| (LEFT, 700.0 - 12.0 * k as f64, l.as_str()))
            .collect();
        let (text, spans) = page(&shown);
        assert_eq!(column_order(&text, &spans), None);
    }

    #[test]
    fn a_narrow_key_column_is_a_table_not_a_column() {
        // "Name: value" rows: the keys are 4 ems wide, so rows stay rows.
        let rows = [
            ("Name", "freshet"),
            ("Kind", "pipeline"),
            ("Lang", "Rust"),
            ("Year", "2026"),
        ];
        let mut shown = Vec::new();
        for (k, (key, value)) in rows.iter().enumerate() {
            let y = 700.0 - 12.0 * k as f64;
            shown.push((LEFT, y, *key));
            shown.push((LEFT + 150.0, y, *value));
        }
        let (text, spans) = page(&shown);
        assert_eq!(column_order(&text, &spans), None);
    }

    #[test]
    fn pieces_of_one_line_rejoin_with_their_own_spacing() {
        // The left column's lines are each shown in two pieces with no break between.
        let mut text = String::new();
        let mut spans = Vec::new();
        let mut push = |text: &mut String, s: &str, x: f64, y: f64, sep: &str| {
            text.push_str(sep);
            let start = text.len();
            text.push_str(s);
            spans.push(Span {
                start,
                end: text.len(),
                place: Some(Place {
                    x0: x,
                    x1: x + 5.0 * s.len() as f64,
                    baseline: y,
                    size: 10.0,
                }),
            });
        };
        for k in 0..4 {
            let y = 700.0 - 12.0 * k as f64;
            let sep = if k == 0 { "" } else { "\n" };
            push(&mut text, "left words and", LEFT, y, sep);
            push(&mut text, " more left words here", LEFT + 70.0, y, "");
            push(&mut text, "right side words of this column", RIGHT, y, "");
        }
        let ordered = column_order(&text, &spans).expect("two columns");
        let left = "left words and more left words here";
        let right = "right side words of this column";
        let expected = [left, left, left, left, right, right, right, right].join("\n");
        assert_eq!(ordered, expected);
    }

    #[test]
    fn ranges_off_the_text_keep_the_content_order_rather_than_panic() {
        let lines: Vec<String> = (1..=4).map(|n| line("left", n)).collect();
        let mut shown = Vec::new();
        for (k, l) in lines.iter().enumerate() {
            shown.push((LEFT, 700.0 - 12.0 * k as f64, l.as_str()));
            shown.push((RIGHT, 700.0 - 12.0 * k as f64, l.as_str()));
        }
        let (text, mut spans) = page(&shown);
        assert!(column_order(&text, &spans).is_some());
        spans[3].end = text.len() + 1;
        assert_eq!(column_order(&text, &spans), None);
        spans[3].end = spans[3].start;
        spans[3].start = spans[2].end - 1;
        assert_eq!(column_order(&text, &spans), None);
    }

    #[test]
    fn right_to_left_runs_read_in_logical_order() {
        // Arabic "marhaban bialealam" as a PDF string stores it: visual order.
        assert_eq!(
            logical_order("ملاعلاب ابحرم").as_deref(),
            Some("مرحبا بالعالم")
        );
        // Hebrew "shalom olam" with Latin and digits beside it: only the Hebrew turns.
        assert_eq!(
            logical_order("Hello םלוע םולש 2026").as_deref(),
            Some("Hello שלום עולם 2026")
        );
        // A mark stays after its letter: "bi" (beh + kasra) stored visually after "mn".
        assert_eq!(
            logical_order("نم\u{0628}\u{0650}").as_deref(),
            Some("\u{0628}\u{0650}من")
        );
        assert_eq!(logical_order("plain English, 42"), None);
    }

    #[test]
    fn text_without_a_place_keeps_the_content_order() {
        let (text, mut spans) = page(&[(LEFT, 700.0, "one"), (RIGHT, 700.0, "two")]);
        spans[1].place = None;
        assert_eq!(column_order(&text, &spans), None);
    }
}
