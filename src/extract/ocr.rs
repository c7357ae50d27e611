//! Optical character recognition through Debian's `tesseract` (and poppler's `pdftoppm` to
//! render a scanned PDF page): an image or an image-only page -> text, word by word, with
//! the confidence tesseract gives each word.
//!
//! Invariant: a word tesseract is unsure of is dropped, and a page whose recognised text is
//! mostly unsure is refused as garbage, never indexed; every process runs under a time
//! limit, on an image whose pixel count is bounded, so no input can hang or exhaust a run.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Words below this confidence (tesseract's 0-100) are left out: on drawings, photos and
/// stains tesseract still "reads" something, and those words are what it is unsure of.
const MIN_WORD_CONFIDENCE: f32 = 30.0;
/// A page whose words average below this (weighted by length) is noise, not text.
const MIN_PAGE_CONFIDENCE: f32 = 50.0;
/// The largest image handed to tesseract: about an A2 page at 300 dpi. Larger images and
/// pages are rendered at a lower resolution, or refused when they are files.
pub const MAX_PIXELS: u64 = 60_000_000;
/// The longest side in pixels a page is rendered at, whatever its pixel count.
const MAX_SIDE: f64 = 12_000.0;

/// A located, working tesseract with the settings every recognition in a run uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Ocr {
    /// tesseract's `-l`: `eng`, `eng+deu`.
    languages: String,
    /// tesseract's own version, part of the fingerprint: another version reads otherwise.
    version: String,
    dpi: u32,
    timeout: Duration,
}

/// What tesseract read on one page or image.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    /// One entry per page tesseract saw (a multi-page TIFF has several): its number and
    /// text, in order. Refused pages are absent.
    pub pages: Vec<(u32, String)>,
    /// Pages refused as noise, each with the reason.
    pub refused: Vec<String>,
    /// The mean confidence (0-100) of the kept words, weighted by their length.
    pub confidence: f32,
}

impl Ocr {
    /// Finds tesseract and checks that every language asked for is installed; the error
    /// says what to install.
    pub fn detect(languages: &str, dpi: u32, timeout: Duration) -> Result<Ocr, String> {
        let install = "run `scripts/provision --ocr` (Debian packages tesseract-ocr, tesseract-ocr-eng and poppler-utils), or set extract.ocr = \"off\"";
        let version = Command::new("tesseract")
            .arg("--version")
            .output()
            .map_err(|e| {
                format!("extract.ocr = \"tesseract\" but tesseract cannot be run ({e}); {install}")
            })?;
        let banner = String::from_utf8_lossy(&version.stdout).to_string()
            + &String::from_utf8_lossy(&version.stderr);
        let version = banner
            .lines()
            .find_map(|l| l.strip_prefix("tesseract "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| {
                format!("`tesseract --version` printed no version ({banner:?}); {install}")
            })?;
        let listed = Command::new("tesseract")
            .arg("--list-langs")
            .output()
            .map_err(|e| format!("`tesseract --list-langs` failed: {e}"))?;
        let installed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_string())
            .collect();
        for language in languages.split('+') {
            if !installed.iter().any(|l| l == language) {
                return Err(format!(
                    "extract.ocr_languages names `{language}` but tesseract has no such language data (installed: {}); install Debian's tesseract-ocr-{language} or change extract.ocr_languages",
                    installed.join(", ")
                ));
            }
        }
        if Command::new("pdftoppm").arg("-v").output().is_err() {
            return Err(format!(
                "extract.ocr = \"tesseract\" needs pdftoppm to render scanned PDF pages, and it cannot be run; {install}"
            ));
        }
        Ok(Ocr {
            languages: languages.to_string(),
            version,
            dpi,
            timeout,
        })
    }

    /// What decides the text OCR yields: engine version, languages and resolution.
    pub fn fingerprint(&self) -> String {
        format!(
            "tesseract-{}:{}:{}dpi",
            self.version, self.languages, self.dpi
        )
    }

    /// Reads an image file (PNG, JPEG, TIFF with all its pages, GIF, BMP, WebP, PNM).
    pub fn image(&self, bytes: &[u8]) -> Result<Recognized, String> {
        let size =
            imagesize::blob_size(bytes).map_err(|e| format!("not a readable image ({e})"))?;
        let pixels = size.width as u64 * size.height as u64;
        if pixels > MAX_PIXELS {
            return Err(format!(
                "image of {}x{} pixels is over the {} million pixels OCR reads; downscale it or exclude it",
                size.width,
                size.height,
                MAX_PIXELS / 1_000_000
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let path = dir.path().join("image");
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write a temporary file: {e}"))?;
        self.recognize(&path)
    }

    /// Renders one page of the PDF at `path` (its size in points from its MediaBox) and
    /// reads it; the page keeps its number.
    pub fn pdf_page(
        &self,
        path: &Path,
        page: u32,
        size_pt: (f64, f64),
    ) -> Result<Recognized, String> {
        let dpi = render_dpi(self.dpi, size_pt);
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let root = dir.path().join("page");
        let mut render = Command::new("pdftoppm");
        render
            .args(["-gray", "-singlefile", "-r"])
            .arg(format!("{dpi:.0}"))
            .args(["-f", &page.to_string(), "-l", &page.to_string()])
            .arg(path)
            .arg(&root);
        run(render, self.timeout, "pdftoppm")?;
        let image = root.with_extension("pgm");
        if !image.exists() {
            return Err("pdftoppm rendered nothing".into());
        }
        let mut read = self.recognize(&image)?;
        for (number, _) in &mut read.pages {
            *number = page;
        }
        // tesseract numbers the one image it saw 1; the reasons name the PDF's page.
        for reason in &mut read.refused {
            if let Some((_, why)) = reason.split_once(": ") {
                *reason = format!("page {page}: {why}");
            }
        }
        Ok(read)
    }

    fn recognize(&self, image: &Path) -> Result<Recognized, String> {
        let mut tesseract = Command::new("tesseract");
        tesseract
            .arg(image)
            .arg("stdout")
            .args(["-l", &self.languages, "--dpi", &self.dpi.to_string(), "tsv"])
            // One thread per recognition: documents are already read in parallel, and
            // the model's threads need the rest.
            .env("OMP_THREAD_LIMIT", "1");
        let tsv = run(tesseract, self.timeout, "tesseract")?;
        Ok(from_tsv(&String::from_utf8_lossy(&tsv)))
    }
}

/// Marks a document's payload as read by OCR: `ocr = true`, the mean word confidence
/// (0-100), and for a PDF the pages OCR read (the others have a text layer).
pub fn note(
    metadata: &mut serde_json::Map<String, serde_json::Value>,
    confidence: f32,
    pdf_pages: Option<&[u32]>,
) {
    metadata.insert("ocr".into(), true.into());
    metadata.insert("ocr_confidence".into(), (confidence.round() as u32).into());
    if let Some(pages) = pdf_pages {
        metadata.insert("ocr_pages".into(), pages.to_vec().into());
    }
}

/// The resolution a page is rendered at: the configured one, lowered for pages so large
/// that the image would pass [`MAX_PIXELS`] or [`MAX_SIDE`].
fn render_dpi(dpi: u32, (width_pt, height_pt): (f64, f64)) -> f64 {
    let (w_in, h_in) = (
        width_pt.abs().max(1.0) / 72.0,
        height_pt.abs().max(1.0) / 72.0,
    );
    let dpi = dpi as f64;
    let by_pixels = (MAX_PIXELS as f64 / (w_in * h_in)).sqrt();
    let by_side = MAX_SIDE / w_in.max(h_in);
    dpi.min(by_pixels).min(by_side).max(1.0)
}

/// Runs a command to completion within `timeout`, returning its standard output.
fn run(mut command: Command, timeout: Duration, name: &str) -> Result<Vec<u8>, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{name} cannot be run: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} took longer than {} s (extract.ocr_timeout_s) and was stopped",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    };
    let stdout = out
        .join()
        .map_err(|_| format!("{name}: output reader panicked"))?
        .map_err(|e| format!("{name}: {e}"))?;
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let message = String::from_utf8_lossy(&stderr);
        let message = message.trim();
        return Err(format!(
            "{name} failed ({status}){}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {}", message.chars().take(300).collect::<String>())
            }
        ));
    }
    Ok(stdout)
}

/// Text from tesseract's TSV (level, page, block, paragraph, line, word, box, confidence,
/// text): words joined by spaces, lines by newlines, blocks and paragraphs by blank lines.
fn from_tsv(tsv: &str) -> Recognized {
    struct Page {
        number: u32,
        text: String,
        at: (u32, u32, u32),
        kept_weight: f32,
        kept_chars: usize,
        all_weight: f32,
        all_chars: usize,
    }
    let mut pages: Vec<Page> = Vec::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 12 || cols[0] != "5" {
            continue;
        }
        let word = cols[11].trim();
        let (Ok(page), Ok(block), Ok(par), Ok(row), Ok(confidence)) = (
            cols[1].parse::<u32>(),
            cols[2].parse::<u32>(),
            cols[3].parse::<u32>(),
            cols[4].parse::<u32>(),
            cols[10].parse::<f32>(),
        ) else {
            continue;
        };
        if word.is_empty() {
            continue;
        }
        if pages.last().is_none_or(|p| p.number != page) {
            pages.push(Page {
                number: page,
                text: String::new(),
                at: (0, 0, 0),
                kept_weight: 0.0,
                kept_chars: 0,
                all_weight: 0.0,
                all_chars: 0,
            });
        }
        let current = pages.last_mut().expect("pushed");
        let chars = word.chars().count();
        current.all_chars += chars;
        current.all_weight += confidence * chars as f32;
        if confidence < MIN_WORD_CONFIDENCE {
            continue;
        }
        current.kept_chars += chars;
        current.kept_weight += confidence * chars as f32;
        let at = (block, par, row);
        if !current.text.is_empty() {
            if (at.0, at.1) != (current.at.0, current.at.1) {
                current.text.push_str("\n\n");
            } else if at.2 != current.at.2 {
                current.text.push('\n');
            } else {
                current.text.push(' ');
            }
        }
        current.at = at;
        current.text.push_str(word);
    }
    let mut read = Recognized {
        pages: Vec::new(),
        refused: Vec::new(),
        confidence: 0.0,
    };
    let (mut weight, mut chars) = (0.0f32, 0usize);
    for page in pages {
        // Tesseract numbers the pages of one input from 1.
        let number = page.number.max(1);
        let mean = page.all_weight / page.all_chars.max(1) as f32;
        if mean < MIN_PAGE_CONFIDENCE || page.kept_chars == 0 {
            read.refused.push(format!(
                "page {number}: OCR confidence {mean:.0}% is below {MIN_PAGE_CONFIDENCE:.0}% (no legible text)"
            ));
            continue;
        }
        weight += page.kept_weight;
        chars += page.kept_chars;
        read.pages.push((number, page.text));
    }
    read.confidence = weight / chars.max(1) as f32;
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n";

    fn word(page: u32, block: u32, par: u32, line: u32, conf: f32, text: &str) -> String {
        format!("5\t{page}\t{block}\t{par}\t{line}\t1\t0\t0\t1\t1\t{conf}\t{text}\n")
    }

    #[test]
    fn words_lines_and_paragraphs_are_rebuilt_and_unsure_words_dropped() {
        let tsv = [
            HEADER.to_string(),
            "1\t1\t0\t0\t0\t0\t0\t0\t100\t100\t-1\t\n".into(),
            word(1, 1, 1, 1, 96.0, "The"),
            word(1, 1, 1, 1, 95.0, "Linn"),
            word(1, 1, 1, 2, 91.0, "Sequencer"),
            word(1, 1, 1, 2, 12.0, "~|"),
            word(1, 2, 1, 1, 90.0, "Tracks"),
        ]
        .concat();
        let read = from_tsv(&tsv);
        assert_eq!(
            read.pages,
            vec![(1, "The Linn\nSequencer\n\nTracks".to_string())]
        );
        assert!(read.refused.is_empty());
        assert!(read.confidence > 90.0);
    }

    #[test]
    fn a_page_of_unsure_words_is_refused_and_pages_keep_their_numbers() {
        let tsv = [
            HEADER.to_string(),
            word(1, 1, 1, 1, 20.0, "frenbideak"),
            word(1, 1, 1, 1, 60.0, "se:"),
            word(2, 1, 1, 1, 93.0, "Chapter"),
        ]
        .concat();
        let read = from_tsv(&tsv);
        assert_eq!(read.pages, vec![(2, "Chapter".to_string())]);
        assert_eq!(read.refused.len(), 1);
        assert!(read.refused[0].starts_with("page 1: OCR confidence"));
    }

    #[test]
    fn huge_pages_render_at_a_lower_resolution() {
        // A letter page keeps the configured resolution.
        assert_eq!(render_dpi(300, (612.0, 792.0)), 300.0);
        // A 200-inch square poster is brought under the pixel budget.
        let dpi = render_dpi(300, (14_400.0, 14_400.0));
        let side = dpi * 200.0;
        assert!(side * side <= MAX_PIXELS as f64 * 1.001, "{dpi}");
        // A strip 1 inch by 500 inches is bounded by its long side.
        let dpi = render_dpi(300, (72.0, 36_000.0));
        assert!(dpi * 500.0 <= MAX_SIDE + 1.0, "{dpi}");
    }
}
