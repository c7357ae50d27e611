//! Real documents from public packages' own test data (fetched pinned by hash by
//! `scripts/fixtures`), one of each format, indexed through the real pipeline and model
//! with their structure in the provenance, and found by a query; and hostile containers
//! (a zip bomb, a 10,000-page PDF, a deeply nested DOCX) that fail alone without
//! exhausting memory.

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::{points, str_field, Workspace};
use freshet::config::OcrKind;
use freshet::extract::{extract, extract_with, ExtractError, ExtractOptions, MediaType, Ocr};
use freshet::ledger::DocStatus;
use freshet::pipeline::SyncOptions;
use freshet::store::Payload;

/// `scripts/fixtures`' directory, or `None` (the test says it skipped) unless
/// `FRESHET_REQUIRE_FIXTURES` is set, as `scripts/test` sets it.
fn fixtures(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("FRESHET_FIXTURES_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("freshet/fixtures")))?;
    if dir.join("odfpy-1.4.1/.complete").exists() && dir.join("pypdf-7.1.1/.complete").exists() {
        return Some(dir);
    }
    if std::env::var_os("FRESHET_REQUIRE_FIXTURES").is_some() {
        panic!(
            "{test}: fixtures missing under {}; run scripts/fixtures",
            dir.display()
        );
    }
    eprintln!("{test}: SKIPPED (no fixtures; run scripts/fixtures)");
    None
}

fn heading_path(payload: &Payload) -> Vec<String> {
    payload["heading_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_real_file_of_each_format_is_indexed_with_its_structure_and_found() {
    let Some(fx) = fixtures("formats") else {
        return;
    };
    let ws = Workspace::empty();
    let files = [
        (
            "python_docx-1.2.0/features/steps/test_files/par-known-paragraphs.docx",
            "paragraphs.docx",
        ),
        (
            "python_docx-1.2.0/features/steps/test_files/tbl-cell-access.docx",
            "tables.docx",
        ),
        (
            "python_pptx-1.0.2/features/steps/test_files/ph-populated-placeholders.pptx",
            "slides.pptx",
        ),
        ("odfpy-1.4.1/api-for-odfpy.odt", "api-for-odfpy.odt"),
        ("odfpy-1.4.1/tests/examples/ol.odp", "ol.odp"),
        (
            "odfpy-1.4.1/tests/examples/chinese_spreadsheet.ods",
            "chinese.ods",
        ),
        (
            "pyexcel-xls-0.7.0/tests/fixtures/pyexcel_issue_151.xlsx",
            "issue151.xlsx",
        ),
        ("xlwt-1.3.0/tests/less_simple.xls", "less_simple.xls"),
        (
            "live-manual-epub/usr/share/doc/live-manual/epub/live-manual.en.epub",
            "live-manual.epub",
        ),
        ("mail_parser-4.8.0/tests/mails/mail_test_3", "bills.eml"),
    ];
    for (from, to) in files {
        std::fs::copy(fx.join(from), ws.corpus().join(to)).unwrap();
    }
    // Word's owner file beside an open document: skipped, not failed.
    std::fs::write(ws.corpus().join("~$ragraphs.docx"), b"\x0bJ. Smith\x00\x00").unwrap();
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    for (_, key) in files {
        let row = index.ledger.get("docs", key).await.unwrap().unwrap();
        assert_eq!(row.status, DocStatus::Indexed, "{key}: {:?}", row.reason);
    }
    let owner = index
        .ledger
        .get("docs", "~$ragraphs.docx")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.status, DocStatus::Skipped);
    assert!(owner.reason.unwrap().contains("lock"));
    let all = points(&index).await;
    let of = |key: &str| -> Vec<&Payload> {
        all.values()
            .filter(|p| str_field(p, "doc_key") == key)
            .collect()
    };

    // DOCX: a heading style becomes the heading path; tables become Markdown tables.
    let docx = of("paragraphs.docx");
    assert!(docx.iter().any(|p| heading_path(p) == ["Heading Paragraph"]
        && str_field(p, "text").contains("Normal paragraph")));
    assert_eq!(str_field(docx[0], "media_type"), "docx");
    assert!(of("tables.docx").iter().any(
        |p| str_field(p, "text").contains("| 1 | 2 | 3 |\n| --- | --- | --- |\n| 4 | 5 | 6 |")
    ));

    // PPTX and ODP: the slide number is the page, the slide title the heading.
    let slides = of("slides.pptx");
    // Slides 1-4 hold no text but their titles, so one chunk spans them and slide 5.
    assert!(slides
        .iter()
        .any(|p| str_field(p, "text").contains("# Title Text")
            && p["page"].as_i64().unwrap() <= 5
            && p["page_end"].as_i64().unwrap() >= 5));
    assert!(slides.iter().all(|p| p["page_end"].as_i64().unwrap() <= 9));
    let odp = of("ol.odp");
    assert!(odp.iter().any(|p| p["page"] == 1
        && heading_path(p) == ["OL"]
        && str_field(p, "text").contains("Tsvey")));

    // ODT: outline levels nest.
    let odt = extract(
        &std::fs::read(ws.corpus().join("api-for-odfpy.odt")).unwrap(),
        MediaType::Odt,
    )
    .unwrap();
    assert!(odt
        .sections
        .iter()
        .any(|(_, path)| path == &["The OpenDocument classes", "Loading a document"]));
    assert!(of("api-for-odfpy.odt")
        .iter()
        .any(|p| heading_path(p).len() == 2 && heading_path(p)[0] == "The OpenDocument classes"));

    // Spreadsheets: the sheet name is the heading, rows carry their header.
    assert!(of("chinese.ods")
        .iter()
        .any(|p| heading_path(p) == ["工作表1"]));
    assert!(of("issue151.xlsx")
        .iter()
        .any(|p| heading_path(p) == ["Лист1"] && str_field(p, "text").contains("zzzz1234")));
    assert!(of("less_simple.xls")
        .iter()
        .any(|p| heading_path(p) == ["A Test Sheet"]
            && str_field(p, "text").contains("Test: A1000; B: Zażółć gęślą jaźń 1000")));

    // EPUB: chapter titles are headings.
    let epub = extract(
        &std::fs::read(ws.corpus().join("live-manual.epub")).unwrap(),
        MediaType::Epub,
    )
    .unwrap();
    assert_eq!(epub.title.as_deref(), Some("Live Systems Manual"));
    assert!(epub
        .sections
        .iter()
        .any(
            |(_, path)| path.first().map(String::as_str) == Some("Installation")
                && path
                    .last()
                    .is_some_and(|h| h.ends_with("Installing live-build"))
        ));
    assert!(of("live-manual.epub")
        .iter()
        .all(|p| !heading_path(p).is_empty()
            || str_field(p, "text").starts_with("Live Systems Manual")));

    // Email: subject, sender, recipients and date in the payload; an attachment is a
    // document of its own under the message's key, typed, named, and carrying the
    // message's fields.
    let mail = of("bills.eml");
    assert_eq!(str_field(mail[0], "subject"), "Hi there");
    assert!(str_field(mail[0], "from").contains("Oneil.844@randtelekom.com.tr"));
    assert_eq!(str_field(mail[0], "date"), "2016-08-22T16:56:09+03:00");
    assert!(mail
        .iter()
        .any(|p| p.get("attachment").is_none()
            && str_field(p, "text").contains("bills of the goods")));
    let attachment = of("bills.eml/message.txt");
    assert!(!attachment.is_empty());
    assert!(attachment
        .iter()
        .all(|p| str_field(p, "attachment") == "message.txt"
            && str_field(p, "parent_key") == "bills.eml"
            && str_field(p, "media_type") == "text"
            && str_field(p, "subject") == "Hi there"
            && !str_field(p, "text").contains("bills of the goods")));
    assert!(attachment
        .iter()
        .any(|p| str_field(p, "text").contains("The WatchGuard Firebox")));
    let row = index
        .ledger
        .get("docs", "bills.eml/message.txt")
        .await
        .unwrap()
        .expect("the attachment has a ledger row of its own");
    assert_eq!(row.parent_key.as_deref(), Some("bills.eml"));

    // And each is found by what it says.
    for (query, key) in [
        (
            "bills of the goods delivered in the attachment",
            "bills.eml",
        ),
        (
            "Installing live-build from the Debian repository",
            "live-manual.epub",
        ),
        ("Zażółć gęślą jaźń Lorem ipsum", "less_simple.xls"),
        ("Loading a document with odfpy", "api-for-odfpy.odt"),
    ] {
        let hits = index.query(query, 5, None, None).await.unwrap();
        assert!(
            hits.iter().any(|h| str_field(&h.payload, "doc_key") == key),
            "{query:?} did not find {key}: {:?}",
            hits.iter()
                .map(|h| str_field(&h.payload, "doc_key"))
                .collect::<Vec<_>>()
        );
    }
}

/// A working tesseract, or `None` (the test says it skipped) unless `FRESHET_REQUIRE_OCR`
/// is set, as `scripts/test` sets it after `scripts/provision --ocr`.
fn tesseract(test: &str) -> Option<Ocr> {
    match Ocr::detect("eng", 300, std::time::Duration::from_secs(120)) {
        Ok(ocr) => Some(ocr),
        Err(err) if std::env::var_os("FRESHET_REQUIRE_OCR").is_some() => panic!("{test}: {err}"),
        Err(err) => {
            eprintln!("{test}: SKIPPED (no OCR: {err})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_images_are_read_by_ocr_only_when_asked_for() {
    let Some(fx) = fixtures("ocr") else {
        return;
    };
    let Some(ocr) = tesseract("ocr") else {
        return;
    };
    let resources = fx.join("ocrmypdf-16.5.0/tests/resources");
    let ws = Workspace::empty();
    // A scanned product sheet (one image page), a typed recipe photographed, and a PDF
    // whose fourth page has a text layer and whose other five are images: photos, a
    // diagram, a scanned page.
    for (from, to) in [
        ("linn.pdf", "linn.pdf"),
        ("typewriter.png", "recipe.png"),
        ("multipage.pdf", "multipage.pdf"),
    ] {
        std::fs::copy(resources.join(from), ws.corpus().join(to)).unwrap();
    }
    std::fs::write(
        ws.corpus().join("notes.md"),
        "# Notes\n\nPlain text beside scans.",
    )
    .unwrap();

    // Without OCR: the scan fails naming the setting, the image is skipped unread, and
    // the mixed PDF keeps its text page and names the image pages it is missing.
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed_with_failures", "{report:#?}");
    let row = |index: &freshet::index::Index, key: &'static str| {
        let ledger = index.ledger.clone();
        async move { ledger.get("docs", key).await.unwrap().unwrap() }
    };
    let linn = row(&index, "linn.pdf").await;
    assert_eq!(linn.status, DocStatus::Failed);
    assert!(
        linn.reason
            .as_deref()
            .unwrap()
            .contains("extract.ocr = \"tesseract\""),
        "{:?}",
        linn.reason
    );
    let recipe = row(&index, "recipe.png").await;
    assert_eq!(recipe.status, DocStatus::Skipped);
    assert!(
        recipe.reason.as_deref().unwrap().contains("OCR"),
        "{:?}",
        recipe.reason
    );
    let mixed = row(&index, "multipage.pdf").await;
    assert_eq!(mixed.status, DocStatus::Indexed, "{:?}", mixed.reason);
    let warning = mixed.decode_warning.unwrap();
    assert!(
        warning.contains("5 of 6 pages are images without a text layer"),
        "{warning}"
    );
    let before = points(&index).await;
    assert!(before.values().all(|p| p.get("ocr").is_none()));

    let notes_before = row(&index, "notes.md").await;
    drop(index);

    // With OCR: the PDFs and the image are read again (their fingerprint names
    // tesseract), the Markdown is not; the scan and the image are indexed with
    // `ocr = true`, and the text page of the mixed PDF is still its own text layer.
    let mut config = ws.config();
    config.extract.ocr = OcrKind::Tesseract;
    let index = ws.open_with(config).await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    assert_eq!(report.status, "completed", "{report:#?}");
    assert_eq!(
        (
            report.totals.unchanged,
            report.totals.added + report.totals.updated
        ),
        (1, 3),
        "{report:#?}"
    );
    for key in ["linn.pdf", "recipe.png", "multipage.pdf"] {
        let row = row(&index, key).await;
        assert_eq!(row.status, DocStatus::Indexed, "{key}: {:?}", row.reason);
        assert!(row
            .fingerprint
            .contains(&format!(";ocr={}", ocr.fingerprint())));
    }
    let notes = row(&index, "notes.md").await;
    assert_eq!(notes.fingerprint, notes_before.fingerprint);
    assert_eq!(notes.point_ids, notes_before.point_ids);
    let all = points(&index).await;
    let of = |key: &str| -> Vec<&Payload> {
        all.values()
            .filter(|p| str_field(p, "doc_key") == key)
            .collect()
    };
    let linn = of("linn.pdf");
    assert!(linn
        .iter()
        .all(|p| p["ocr"] == true && p["ocr_pages"] == serde_json::json!([1])));
    let linn_text: String = linn.iter().map(|p| str_field(p, "text")).collect();
    assert!(linn_text.contains("The LinnSequencer"), "{linn_text}");
    assert!(
        linn_text.contains("32 Track MIDI Sequence Recorder"),
        "{linn_text}"
    );
    assert!(linn
        .iter()
        .all(|p| p["ocr_confidence"].as_u64().unwrap() >= 80));
    let recipe: String = of("recipe.png")
        .iter()
        .map(|p| str_field(p, "text"))
        .collect();
    assert!(recipe.contains("Linzensoep"), "{recipe}");
    // The text page is read from its text layer, not by OCR, and its chunks say so.
    let mixed = of("multipage.pdf");
    assert!(mixed.iter().any(|p| p["ocr"] == true));
    assert!(mixed
        .iter()
        .filter(|p| p["page"] == 4 && p["page_end"] == 4)
        .all(|p| p["ocr"] == false));
    let ocr_pages: Vec<u64> = mixed[0]["ocr_pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        !ocr_pages.contains(&4) && !ocr_pages.is_empty(),
        "{ocr_pages:?}"
    );
    assert!(mixed.iter().any(|p| p["page"].as_u64().unwrap() <= 4
        && p["page_end"].as_u64().unwrap() >= 4
        && str_field(p, "text").contains("No vote")));
    assert!(of("notes.md").iter().all(|p| p.get("ocr").is_none()));

    // Found by what the scan says.
    let hits = index
        .query("32 track MIDI sequence recorder", 3, None, None)
        .await
        .unwrap();
    assert_eq!(
        str_field(&hits[0].payload, "doc_key"),
        "linn.pdf",
        "{hits:?}"
    );

    // An image that claims 100,000 x 100,000 pixels is refused before tesseract sees it.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend(100_000u32.to_be_bytes());
    png.extend(100_000u32.to_be_bytes());
    png.extend([8, 0, 0, 0, 0, 0, 0, 0, 0]);
    let options = ExtractOptions { ocr: Some(ocr) };
    match extract_with(&png, MediaType::Image, &options) {
        Err(ExtractError::Invalid(reason)) => {
            assert!(reason.contains("100000x100000"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut out);
    for (name, data) in members {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(data.len() > u32::MAX as usize / 2);
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap();
    out.into_inner()
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_documents_fail_alone_without_exhausting_memory() {
    let ws = Workspace::empty();
    // A zip bomb: a DOCX whose document.xml inflates to 1 GiB of zeros-like XML.
    let bomb_member = vec![b' '; 1 << 30];
    let bomb = zip_of(&[("word/document.xml", &bomb_member)]);
    drop(bomb_member);
    assert!(
        bomb.len() < 4 << 20,
        "the bomb is small on disk: {}",
        bomb.len()
    );
    std::fs::write(ws.corpus().join("bomb.docx"), &bomb).unwrap();
    // The same bomb as a spreadsheet, which calamine would inflate on its own.
    let sheet_bomb = zip_of(&[("xl/worksheets/sheet1.xml", &vec![b' '; 300 << 20])]);
    std::fs::write(ws.corpus().join("bomb.xlsx"), &sheet_bomb).unwrap();

    // A DOCX nested 100,000 tables deep.
    let mut nested = String::from("<w:document xmlns:w=\"w\"><w:body>");
    for _ in 0..100_000 {
        nested.push_str("<w:tbl><w:tr><w:tc>");
    }
    nested.push_str("<w:p><w:r><w:t>deepest cell</w:t></w:r></w:p>");
    for _ in 0..100_000 {
        nested.push_str("</w:tc></w:tr></w:tbl>");
    }
    nested.push_str("<w:p><w:r><w:t>After the nesting, a plain paragraph.</w:t></w:r></w:p></w:body></w:document>");
    std::fs::write(
        ws.corpus().join("nested.docx"),
        zip_of(&[("word/document.xml", nested.as_bytes())]),
    )
    .unwrap();

    // A 10,000-page PDF, each page with a line of text.
    std::fs::write(ws.corpus().join("long.pdf"), many_pages_pdf(10_000)).unwrap();
    std::fs::write(
        ws.corpus().join("fine.md"),
        "# Fine\n\nAn ordinary document next to hostile ones.",
    )
    .unwrap();

    let before = peak_rss_mib();
    let index = ws.open().await;
    let report = index.sync(&SyncOptions::default()).await.unwrap();
    let after = peak_rss_mib();
    assert_eq!(report.status, "completed_with_failures", "{report:#?}");
    for key in ["bomb.docx", "bomb.xlsx"] {
        let row = index.ledger.get("docs", key).await.unwrap().unwrap();
        assert_eq!(row.status, DocStatus::Failed, "{key}");
        assert!(
            row.reason.as_deref().unwrap().contains("zip bomb"),
            "{key}: {:?}",
            row.reason
        );
    }
    let nested_row = index
        .ledger
        .get("docs", "nested.docx")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        nested_row.status,
        DocStatus::Indexed,
        "{:?}",
        nested_row.reason
    );
    let long_row = index.ledger.get("docs", "long.pdf").await.unwrap().unwrap();
    assert_eq!(long_row.status, DocStatus::Indexed, "{:?}", long_row.reason);
    let fine = index.ledger.get("docs", "fine.md").await.unwrap().unwrap();
    assert_eq!(fine.status, DocStatus::Indexed);
    let all = points(&index).await;
    let long: Vec<&Payload> = all
        .values()
        .filter(|p| str_field(p, "doc_key") == "long.pdf")
        .collect();
    assert!(long.iter().any(|p| p["page"] == 1));
    assert!(long.iter().any(|p| p["page_end"] == 10_000
        && str_field(p, "text").contains("This is page 10000 of the long report.")));
    assert!(all
        .values()
        .any(|p| str_field(p, "doc_key") == "nested.docx"
            && str_field(p, "text").contains("deepest cell")));
    // The bombs were never inflated: memory grew by far less than their 1.3 GiB.
    assert!(
        after.saturating_sub(before) < 600,
        "peak RSS grew from {before} to {after} MiB"
    );

    // Directly, without the pipeline: the reasons name what to do.
    let err = extract(&bomb, MediaType::Docx).unwrap_err();
    assert!(
        matches!(&err, ExtractError::Invalid(m) if m.contains("word/document.xml")),
        "{err}"
    );
}

/// pypdf's hello-world.pdf says "Hello World" in seven scripts. Its Arabic glyphs are
/// drawn left to right, in visual order, and its Thai vowel marks are placed by moves that
/// shift the baseline a little; both read as pdftotext reads them.
#[test]
fn right_to_left_text_reads_in_logical_order_and_thai_marks_stay_on_their_line() {
    let Some(dir) = fixtures("right-to-left PDF") else {
        return;
    };
    let pdf = std::fs::read(dir.join("pypdf-7.1.1/resources/hello-world.pdf")).unwrap();
    let text = extract(&pdf, MediaType::Pdf).unwrap().text;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for expected in ["Hello World", "مرحبا بالعالم", "Привет, мир", "สวัสดีชาวโลก"]
    {
        assert!(
            lines.contains(&expected),
            "{expected} not a line of:\n{text}"
        );
    }
}

#[test]
fn a_pdf_with_a_damaged_cross_reference_table_is_rebuilt_by_scanning() {
    let mut pdf = many_pages_pdf(3);
    // The cross-reference table and trailer are gone, as in a truncated transfer.
    let xref = pdf.windows(5).rposition(|w| w == b"xref\n").unwrap();
    pdf.truncate(xref);
    assert!(lopdf::Document::load_mem(&pdf).is_err());
    let doc = extract(&pdf, MediaType::Pdf).unwrap();
    assert!(
        doc.text.contains("This is page 3 of the long report."),
        "{}",
        doc.text
    );
    assert_eq!(doc.page_starts.len(), 3);
    assert!(doc.decode_warning.unwrap().contains("rebuilt"));
}

/// A valid PDF of `pages` pages, each saying which page it is.
fn many_pages_pdf(pages: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    let kids: Vec<String> = (0..pages).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut object = |out: &mut Vec<u8>, body: String| {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", offsets.len()).as_bytes());
    };
    object(&mut out, "<< /Type /Catalog /Pages 2 0 R >>".into());
    object(
        &mut out,
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            kids.join(" ")
        ),
    );
    object(
        &mut out,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
    );
    for i in 0..pages {
        object(
            &mut out,
            format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>", 5 + 2 * i),
        );
        let text = format!(
            "BT /F1 12 Tf 72 720 Td (This is page {} of the long report.) Tj ET",
            i + 1
        );
        object(
            &mut out,
            format!("<< /Length {} >>\nstream\n{text}\nendstream", text.len()),
        );
    }
    let xref_at = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1).as_bytes(),
    );
    for offset in &offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
            offsets.len() + 1
        )
        .as_bytes(),
    );
    out
}
