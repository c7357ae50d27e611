//! EPUB -> Markdown: the chapters of the spine in reading order, each rendered by the HTML
//! reader, so that chapter titles (their `<h1>`...) become the heading path.
//!
//! Invariant: only the spine's XHTML is read, in the package's order; a chapter that
//! cannot be read is named in the warning and the rest of the book is still indexed.

use std::collections::HashMap;

use super::archive::{resolve, Archive};
use super::markdown::MarkdownWriter;
use super::xml::{element_text, events, XmlEvent};
use super::{ExtractError, Extracted};

pub fn extract(bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let mut archive = Archive::open(bytes, "EPUB")?;
    let container = archive.require("META-INF/container.xml")?;
    let package_path = events(&container, "META-INF/container.xml")?
        .into_iter()
        .find_map(|event| match event {
            XmlEvent::Open(el) if el.name == "rootfile" => el.attr("full-path").map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| {
            ExtractError::Invalid(
                "not a valid EPUB: META-INF/container.xml names no package; re-save it or exclude it"
                    .into(),
            )
        })?;
    let package = archive.require(&package_path)?;
    let base = package_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let mut manifest: HashMap<String, (String, String)> = HashMap::new();
    let mut spine = Vec::new();
    let package_events = events(&package, &package_path)?;
    let title = element_text(&package_events, "title");
    for event in package_events {
        match event {
            XmlEvent::Open(el) if el.name == "item" => {
                if let (Some(id), Some(href)) = (el.attr("id"), el.attr("href")) {
                    let media = el.attr("media-type").unwrap_or_default().to_string();
                    manifest.insert(
                        id.to_string(),
                        (
                            percent_encoding::percent_decode_str(href)
                                .decode_utf8_lossy()
                                .into_owned(),
                            media,
                        ),
                    );
                }
            }
            XmlEvent::Open(el) if el.name == "itemref" && el.attr("linear") != Some("no") => {
                if let Some(id) = el.attr("idref") {
                    spine.push(id.to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = MarkdownWriter::default();
    let mut unreadable = Vec::new();
    let mut read = std::collections::HashSet::new();
    for id in spine {
        let Some((href, media)) = manifest.get(&id) else {
            unreadable.push(format!("{id} (not in the manifest)"));
            continue;
        };
        if !media.contains("html") {
            continue;
        }
        // Several spine entries may name parts of one file (`ch1.xhtml#part2`).
        let file = href.split('#').next().unwrap_or(href);
        let path = resolve(base, file);
        if !read.insert(path.clone()) {
            continue;
        }
        let chapter = match archive.read(&path)? {
            Some(xhtml) => super::html::extract(&xhtml),
            None => {
                unreadable.push(format!("{path} (missing)"));
                continue;
            }
        };
        match chapter {
            Ok(chapter) => out.markdown(&chapter.text),
            Err(err) => unreadable.push(format!("{path} ({err})")),
        }
    }
    let warning = (!unreadable.is_empty())
        .then(|| format!("chapters that could not be read: {}", unreadable.join("; ")));
    out.finish(title, warning)
}
