//! Extraction benchmark on public corpora nobody here wrote: PDFs against poppler's
//! `pdftotext` (coverage and token F1 per document), labelled legacy-encoding files
//! against their true text, OCR (scans read, and text pages rendered to images read back
//! against their own text layer), and any other files shown as freshet extracts them.
//! Prints figures; asserts nothing.
//!
//! Run: `scripts/fixtures --bench` (fetches the pinned corpora), then
//! `cargo run --example extract_bench -- [--pdf DIR]... [--chardet DIR] [--charset-normalizer DIR] [--ocr] [--show FILE]...`
//! With no arguments it reads the corpora `scripts/fixtures --bench` unpacked; `--ocr`
//! (after `scripts/provision --ocr`) runs the OCR figures alone.
//!
//! `pdftotext` (Debian's poppler-utils) is the reference here and nowhere else; the true
//! text of a labelled file comes from Python's codecs (`python3`), not from encoding_rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use freshet::extract::{
    decode_text, extract, extract_with, normalize, ExtractOptions, MediaType, Ocr,
};

fn main() -> anyhow::Result<()> {
    let mut pdf_dirs = Vec::new();
    let mut chardet = None;
    let mut charset_normalizer = None;
    let mut show = Vec::new();
    let mut ocr = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value after the flag");
        match arg.as_str() {
            "--pdf" => pdf_dirs.push(PathBuf::from(value()?)),
            "--chardet" => chardet = Some(PathBuf::from(value()?)),
            "--charset-normalizer" => charset_normalizer = Some(PathBuf::from(value()?)),
            "--show" => show.push(PathBuf::from(value()?)),
            "--ocr" => ocr = true,
            other => bail!("unknown argument {other}"),
        }
    }
    for file in &show {
        show_file(file)?;
    }
    if !show.is_empty() {
        return Ok(());
    }
    let bench = dirs::cache_dir()
        .context("no cache directory")?
        .join("freshet/fixtures/bench");
    if ocr {
        return ocr_figures(&bench);
    }
    if pdf_dirs.is_empty() && chardet.is_none() && charset_normalizer.is_none() {
        pdf_dirs = vec![
            bench.join("pikepdf-9.11.0/tests/resources"),
            bench.with_file_name("pypdf-7.1.1"),
        ];
        chardet = Some(bench.join("chardet-5.2.0/tests"));
        charset_normalizer = Some(bench.join("charset_normalizer-3.4.2"));
    }
    if !pdf_dirs.is_empty() {
        pdfs(&pdf_dirs)?;
    }
    let mut labelled = Vec::new();
    if let Some(dir) = chardet {
        labelled.extend(chardet_labels(&dir)?);
    }
    if let Some(dir) = charset_normalizer {
        labelled.extend(charset_normalizer_labels(&dir)?);
    }
    if !labelled.is_empty() {
        encodings(&labelled)?;
    }
    Ok(())
}

fn show_file(path: &Path) -> anyhow::Result<()> {
    let key = path.to_string_lossy();
    let media = MediaType::from_key(&key).context("no media type for this name")?;
    let bytes = std::fs::read(path)?;
    match extract(&bytes, media) {
        Ok(doc) => {
            println!(
                "== {key} ({}): title {:?}, warning {:?}",
                media.name(),
                doc.title,
                doc.decode_warning
            );
            println!(
                "   pages {:?}",
                doc.page_starts.iter().map(|(_, p)| p).collect::<Vec<_>>()
            );
            println!(
                "   headings {:?}",
                doc.sections
                    .iter()
                    .map(|(_, p)| p.join(" > "))
                    .collect::<Vec<_>>()
            );
            for part in &doc.parts {
                match &part.doc {
                    Ok(text) => println!(
                        "   part {} ({}): {} bytes of text",
                        part.name,
                        part.media.name(),
                        text.text.len()
                    ),
                    Err(reason) => println!(
                        "   part {} ({}): failed: {reason}",
                        part.name,
                        part.media.name()
                    ),
                }
            }
            if !doc.metadata.is_empty() {
                println!(
                    "   fields {}",
                    serde_json::Value::Object(doc.metadata.clone())
                );
            }
            let preview: String = doc.text.chars().take(1500).collect();
            println!("{preview}\n");
        }
        Err(err) => println!("== {key}: {err}\n"),
    }
    Ok(())
}

fn files_with(dir: &Path, accept: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_with(&path, accept, out);
        } else if accept(&path) {
            out.push(path);
        }
    }
}

fn tokens(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

/// Adjacent word pairs: a page read in another order (two columns interleaved line by
/// line) keeps its words but loses its pairs.
fn bigrams(text: &str) -> HashMap<String, usize> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut counts = HashMap::new();
    for pair in words.windows(2) {
        *counts
            .entry(format!("{} {}", pair[0], pair[1]))
            .or_insert(0) += 1;
    }
    counts
}

fn f1(ours: &HashMap<String, usize>, theirs: &HashMap<String, usize>) -> f64 {
    let common: usize = ours
        .iter()
        .map(|(w, n)| (*n).min(*theirs.get(w).unwrap_or(&0)))
        .sum();
    let (a, b) = (ours.values().sum::<usize>(), theirs.values().sum::<usize>());
    if a == 0 || b == 0 || common == 0 {
        return 0.0;
    }
    let (p, r) = (common as f64 / a as f64, common as f64 / b as f64);
    2.0 * p * r / (p + r)
}

fn pdftotext(path: &Path) -> Option<String> {
    let out = Command::new("pdftotext")
        .args(["-q", "-enc", "UTF-8"])
        .arg(path)
        .arg("-")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pdfs(dirs: &[PathBuf]) -> anyhow::Result<()> {
    if Command::new("pdftotext").arg("-v").output().is_err() {
        bail!(
            "pdftotext not found: apt-get install poppler-utils (the benchmark's reference only)"
        );
    }
    let mut files = Vec::new();
    for dir in dirs {
        files_with(
            dir,
            &|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf")),
            &mut files,
        );
    }
    println!(
        "PDFs: {} files under {}",
        files.len(),
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (mut reference_has_text, mut indexed, mut indexed_of_reference) = (0, 0, 0);
    let mut scores = Vec::new();
    let mut order_scores = Vec::new();
    let mut misses = Vec::new();
    let mut freshet_ms = 0u128;
    for file in &files {
        let bytes = std::fs::read(file)?;
        let reference = pdftotext(file).unwrap_or_default();
        let reference_tokens = tokens(&reference);
        let poppler_text = reference_tokens.values().sum::<usize>() >= 3;
        let started = Instant::now();
        let ours = std::panic::catch_unwind(|| extract(&bytes, MediaType::Pdf));
        freshet_ms += started.elapsed().as_millis();
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let ours = match ours {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("panicked".to_string()),
        };
        if ours.is_ok() {
            indexed += 1;
        }
        if poppler_text {
            reference_has_text += 1;
            match &ours {
                Ok(doc) => {
                    indexed_of_reference += 1;
                    let score = f1(&tokens(&doc.text), &reference_tokens);
                    let order = f1(&bigrams(&doc.text), &bigrams(&reference));
                    if score < 0.9 || order < 0.8 {
                        misses.push(format!("{name}: F1 {score:.2}, word-pair F1 {order:.2}"));
                    }
                    scores.push(score);
                    order_scores.push(order);
                }
                Err(reason) => misses.push(format!("{name}: not indexed: {reason}")),
            }
        }
    }
    scores.sort_by(f64::total_cmp);
    let median = scores.get(scores.len() / 2).copied().unwrap_or(0.0);
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    println!(
        "  pdftotext extracts text from {reference_has_text}; freshet indexes {indexed_of_reference} of those ({:.1}%), {indexed} of all {}",
        100.0 * indexed_of_reference as f64 / reference_has_text.max(1) as f64,
        files.len()
    );
    println!(
        "  token F1 against pdftotext over the {} indexed: median {median:.3}, mean {mean:.3}, >= 0.95: {}",
        scores.len(),
        scores.iter().filter(|s| **s >= 0.95).count()
    );
    order_scores.sort_by(f64::total_cmp);
    println!(
        "  reading order, word-pair F1 against pdftotext: median {:.3}, mean {:.3}, >= 0.8: {}",
        order_scores
            .get(order_scores.len() / 2)
            .copied()
            .unwrap_or(0.0),
        order_scores.iter().sum::<f64>() / order_scores.len().max(1) as f64,
        order_scores.iter().filter(|s| **s >= 0.8).count()
    );
    println!("  freshet extraction time, all files: {freshet_ms} ms");
    for miss in &misses {
        println!("    {miss}");
    }
    Ok(())
}

/// OCR: how many of ocrmypdf's scans and images freshet reads, and how close OCR of text
/// pages rendered to images comes to their own text layer (token F1 per page).
fn ocr_figures(bench: &Path) -> anyhow::Result<()> {
    let ocr = Ocr::detect("eng", 300, std::time::Duration::from_secs(300))
        .map_err(|e| anyhow::anyhow!(e))?;
    let options = ExtractOptions {
        ocr: Some(ocr.clone()),
    };
    let scans = bench.join("../ocrmypdf-16.5.0/tests/resources");
    let mut files = Vec::new();
    files_with(
        &scans,
        &|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "pdf" | "png" | "jpg"))
        },
        &mut files,
    );
    println!(
        "OCR ({}): {} PDFs and images in ocrmypdf 16.5.0's tests/resources",
        ocr.fingerprint(),
        files.len()
    );
    let (mut read, mut without_ocr, mut ocr_used) = (0, 0, 0);
    let mut total_ms = 0u128;
    for file in &files {
        let bytes = std::fs::read(file)?;
        let media = MediaType::from_key(&file.to_string_lossy()).context("media")?;
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let plain = extract(&bytes, media);
        let started = Instant::now();
        let ours = std::panic::catch_unwind(|| extract_with(&bytes, media, &options));
        let ms = started.elapsed().as_millis();
        total_ms += ms;
        if plain.is_ok() {
            without_ocr += 1;
        }
        match ours {
            Ok(Ok(doc)) => {
                read += 1;
                let by_ocr = doc.metadata.get("ocr").is_some();
                ocr_used += usize::from(by_ocr);
                let words = tokens(&doc.text).values().sum::<usize>();
                let head: String = doc
                    .text
                    .split_whitespace()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "    {name}: {words} words{} in {ms} ms{}: {head}",
                    doc.metadata
                        .get("ocr_confidence")
                        .map(|c| format!(", OCR confidence {c}"))
                        .unwrap_or_default(),
                    doc.decode_warning
                        .as_ref()
                        .map(|w| format!(" [{}]", w.chars().take(120).collect::<String>()))
                        .unwrap_or_default()
                );
            }
            Ok(Err(e)) => println!(
                "    {name}: not indexed in {ms} ms: {}",
                e.to_string().chars().take(160).collect::<String>()
            ),
            Err(_) => println!("    {name}: panicked"),
        }
    }
    println!(
        "  indexed without OCR: {without_ocr} of {}; with OCR: {read} ({ocr_used} through OCR), {total_ms} ms in all",
        files.len()
    );

    // Round trip: page 1 of each PDF with a real text layer (pikepdf's and pypdf's),
    // rendered to a 300 dpi image by pdftoppm and read back, against pdftotext's page 1.
    let mut pdfs = Vec::new();
    for dir in [
        bench.join("pikepdf-9.11.0/tests/resources"),
        bench.with_file_name("pypdf-7.1.1"),
    ] {
        files_with(
            &dir,
            &|p| p.extension().is_some_and(|e| e == "pdf"),
            &mut pdfs,
        );
    }
    let image_dir = tempfile::tempdir()?;
    let mut scores = Vec::new();
    let mut lines = Vec::new();
    for file in &pdfs {
        let reference = Command::new("pdftotext")
            .args(["-q", "-enc", "UTF-8", "-f", "1", "-l", "1"])
            .arg(file)
            .arg("-")
            .output()?;
        let reference = tokens(&String::from_utf8_lossy(&reference.stdout));
        // Pages of real prose only: at least 50 words of letters.
        if reference.values().sum::<usize>() < 50 {
            continue;
        }
        let root = image_dir.path().join(format!("p{}", scores.len()));
        let rendered = Command::new("pdftoppm")
            .args([
                "-q",
                "-r",
                "300",
                "-gray",
                "-png",
                "-singlefile",
                "-f",
                "1",
                "-l",
                "1",
            ])
            .arg(file)
            .arg(&root)
            .status()?;
        let png = root.with_extension("png");
        if !rendered.success() || !png.exists() {
            continue;
        }
        let score = match extract_with(&std::fs::read(&png)?, MediaType::Image, &options) {
            Ok(doc) => f1(&tokens(&doc.text), &reference),
            Err(_) => 0.0,
        };
        lines.push(format!(
            "    {}: F1 {score:.3}",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        scores.push(score);
        if scores.len() == 30 {
            break;
        }
    }
    scores.sort_by(f64::total_cmp);
    println!(
        "  round trip over {} text pages rendered at 300 dpi: token F1 against the text layer median {:.3}, mean {:.3}, >= 0.9: {}",
        scores.len(),
        scores.get(scores.len() / 2).copied().unwrap_or(0.0),
        scores.iter().sum::<f64>() / scores.len().max(1) as f64,
        scores.iter().filter(|s| **s >= 0.9).count()
    );
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// A file and the encoding its corpus labels it with (a Python codec name).
struct Labelled {
    path: PathBuf,
    label: String,
}

/// chardet's test corpus: `tests/<encoding>[-<language>]/*`.
fn chardet_labels(dir: &Path) -> anyhow::Result<Vec<Labelled>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        // `iso-8859-2-croatian`: the true text's decoder strips the language (below).
        let label = entry.file_name().to_string_lossy().into_owned();
        let lower = label.to_ascii_lowercase();
        if matches!(lower.as_str(), "ascii" | "utf-8" | "utf-8-sig") {
            continue;
        }
        let mut files = Vec::new();
        files_with(&entry.path(), &|_| true, &mut files);
        out.extend(files.into_iter().map(|path| Labelled {
            path,
            label: label.clone(),
        }));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// charset-normalizer's `data/` files, labelled in its `tests/test_full_detection.py`.
fn charset_normalizer_labels(dir: &Path) -> anyhow::Result<Vec<Labelled>> {
    let tests = std::fs::read_to_string(dir.join("tests/test_full_detection.py"))?;
    let pattern = regex::Regex::new(r#"\("(sample-[^"]+)",\s*"([^"]+)""#)?;
    Ok(pattern
        .captures_iter(&tests)
        .filter(|c| !c[2].starts_with("utf_8"))
        .map(|c| Labelled {
            path: dir.join("data").join(&c[1]),
            label: c[2].to_string(),
        })
        .collect())
}

fn encodings(files: &[Labelled]) -> anyhow::Result<()> {
    // The true text of every file, decoded by Python's codec for its label.
    let listing: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::json!([f.path, f.label]))
        .collect();
    let script = r#"
import json, sys, codecs
out = []
def resolve(label):
    parts = label.split('-')
    for n in range(len(parts), 0, -1):
        try:
            codecs.lookup('-'.join(parts[:n]))
            return '-'.join(parts[:n])
        except LookupError:
            pass
for path, label in json.load(sys.stdin):
    data = open(path, 'rb').read()
    try:
        out.append(data.decode(resolve(label)))
    except Exception:
        out.append(None)
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("python3 is needed for the true text of labelled files")?;
    serde_json::to_writer(child.stdin.take().context("stdin")?, &listing)?;
    let output = child.wait_with_output()?;
    let truths: Vec<Option<String>> = serde_json::from_slice(&output.stdout)?;
    let mut by_label: HashMap<String, (usize, usize)> = HashMap::new();
    let (mut right, mut total, mut no_truth) = (0, 0, 0);
    let mut wrong = Vec::new();
    let declares = regex::bytes::Regex::new(r"(?i)<\?xml[^>]*encoding=|charset=")?;
    let (mut undeclared_right, mut undeclared) = (0, 0);
    for (file, truth) in files.iter().zip(truths) {
        let Some(truth) = truth else {
            no_truth += 1;
            continue;
        };
        total += 1;
        let entry = by_label.entry(file.label.to_ascii_lowercase()).or_default();
        entry.1 += 1;
        let bytes = std::fs::read(&file.path)?;
        let declared = declares.is_match(&bytes[..bytes.len().min(1024)]);
        let ours = decode_text(&bytes);
        let truth = normalize(truth.trim_start_matches('\u{feff}'), true);
        let (ok, what) = match &ours {
            Ok(decoded) => {
                let ours = normalize(&decoded.text, true);
                let agree = char_f1(&ours, &truth);
                (
                    agree >= 0.99,
                    format!("{} (character F1 {agree:.3})", decoded.encoding),
                )
            }
            Err(err) => (false, err.to_string()),
        };
        if !declared {
            undeclared += 1;
            undeclared_right += usize::from(ok);
        }
        if ok {
            right += 1;
            entry.0 += 1;
        } else {
            wrong.push(format!("{} [{}]: {what}", file.path.display(), file.label));
        }
    }
    println!(
        "Encodings: {total} labelled non-UTF-8 files ({no_truth} more whose label Python cannot decode skipped)"
    );
    println!(
        "  decoded to the true text (character-multiset F1 >= 0.99): {right} of {total} ({:.1}%)",
        100.0 * right as f64 / total.max(1) as f64
    );
    println!(
        "  of those with no encoding declaration in their first 1 KiB: {undeclared_right} of {undeclared} ({:.1}%)",
        100.0 * undeclared_right as f64 / undeclared.max(1) as f64
    );
    let mut labels: Vec<_> = by_label.into_iter().collect();
    labels.sort();
    let per_label: Vec<String> = labels
        .iter()
        .map(|(label, (ok, n))| format!("{label} {ok}/{n}"))
        .collect();
    println!("  by label: {}", per_label.join(", "));
    for w in wrong {
        println!("    {w}");
    }
    Ok(())
}

/// F1 of the two texts' multisets of non-space characters: a wrong code page changes
/// most non-ASCII characters, a dropped BOM or a normalized space changes none.
fn char_f1(a: &str, b: &str) -> f64 {
    let count = |t: &str| {
        let mut m: HashMap<char, usize> = HashMap::new();
        for c in t.chars().filter(|c| !c.is_whitespace()) {
            *m.entry(c).or_insert(0) += 1;
        }
        m
    };
    let (a, b) = (count(a), count(b));
    let common: usize = a
        .iter()
        .map(|(c, n)| (*n).min(*b.get(c).unwrap_or(&0)))
        .sum();
    let (na, nb) = (a.values().sum::<usize>(), b.values().sum::<usize>());
    if na == 0 || nb == 0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    let (p, r) = (common as f64 / na as f64, common as f64 / nb as f64);
    if common == 0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}
