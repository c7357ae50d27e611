//! Bounded reading of the ZIP containers of Office, OpenDocument and EPUB files.
//!
//! Invariant: no member is inflated past [`MAX_MEMBER_BYTES`] and no document past
//! [`MAX_TOTAL_BYTES`], whatever sizes its directory claims, so a zip bomb fails its own
//! document with a reason and never exhausts memory.

use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::ExtractError;

/// The most one member may inflate to (an XML part of a very large document is tens of MB).
pub(super) const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// The most all members read from one document may inflate to together.
pub(super) const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// More members than any real document has; a directory claiming more is hostile.
const MAX_MEMBERS: usize = 20_000;

pub(super) struct Archive<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    kind: &'static str,
    inflated: u64,
}

impl<'a> Archive<'a> {
    /// Opens a container; `kind` names the format in errors ("DOCX").
    pub fn open(bytes: &'a [u8], kind: &'static str) -> Result<Self, ExtractError> {
        let zip = ZipArchive::new(Cursor::new(bytes)).map_err(|err| {
            ExtractError::Invalid(format!(
                "not a readable {kind} (its ZIP container is damaged: {err}); re-save it or exclude it"
            ))
        })?;
        if zip.len() > MAX_MEMBERS {
            return Err(ExtractError::Invalid(format!(
                "{kind} container has {} members (more than {MAX_MEMBERS}); refusing it as a likely zip bomb",
                zip.len()
            )));
        }
        Ok(Archive {
            zip,
            kind,
            inflated: 0,
        })
    }

    /// A member's bytes, `None` when it is absent; too large a member is an error.
    pub fn read(&mut self, name: &str) -> Result<Option<Vec<u8>>, ExtractError> {
        let kind = self.kind;
        let budget = self.budget();
        let mut member = match self.zip.by_name(name) {
            Ok(member) => member,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(err) => {
                return Err(ExtractError::Invalid(format!(
                    "{kind} member {name} cannot be read ({err}); re-save it or exclude it"
                )))
            }
        };
        if member.size() > budget {
            return Err(too_large(kind, name, member.size()));
        }
        let mut out = Vec::with_capacity(member.size().min(1 << 20) as usize);
        self.inflated += inflate_within(&mut member, kind, name, budget, &mut out)?;
        Ok(Some(out))
    }

    /// A member that must be there.
    pub fn require(&mut self, name: &str) -> Result<Vec<u8>, ExtractError> {
        let kind = self.kind;
        self.read(name)?.ok_or_else(|| {
            ExtractError::Invalid(format!(
                "not a valid {kind}: it has no {name}; re-save it or exclude it"
            ))
        })
    }

    /// Inflates every XML part (what calamine reads; pictures and other media it never
    /// opens) into nothing, within the limits: run before handing the container to a
    /// reader that does not bound what it inflates.
    pub fn check_all(&mut self) -> Result<(), ExtractError> {
        for index in 0..self.zip.len() {
            let kind = self.kind;
            let budget = self.budget();
            let mut member = self.zip.by_index(index).map_err(|err| {
                ExtractError::Invalid(format!(
                    "{kind} container is damaged ({err}); re-save it or exclude it"
                ))
            })?;
            let name = member.name().map(|n| n.into_owned()).unwrap_or_default();
            let lower = name.to_ascii_lowercase();
            if !(lower.ends_with(".xml") || lower.ends_with(".rels") || lower.ends_with(".bin")) {
                continue;
            }
            self.inflated +=
                inflate_within(&mut member, kind, &name, budget, &mut std::io::sink())?;
        }
        Ok(())
    }

    /// What the next member may inflate to: the member limit, or what is left of the
    /// document's.
    fn budget(&self) -> u64 {
        MAX_MEMBER_BYTES.min(MAX_TOTAL_BYTES - self.inflated)
    }
}

/// Inflates a member into `out`, never more than one byte past `budget` (the directory's
/// size may lie), and returns its size; past the budget it is refused as a zip bomb.
fn inflate_within(
    member: &mut impl Read,
    kind: &str,
    name: &str,
    budget: u64,
    out: &mut impl std::io::Write,
) -> Result<u64, ExtractError> {
    let size = std::io::copy(&mut member.take(budget + 1), out).map_err(|err| {
        ExtractError::Invalid(format!(
            "{kind} member {name} is corrupt ({err}); re-save it or exclude it"
        ))
    })?;
    if size > budget {
        return Err(too_large(kind, name, size));
    }
    Ok(size)
}

fn too_large(kind: &str, name: &str, size: u64) -> ExtractError {
    ExtractError::Invalid(format!(
        "{kind} member {name} inflates to {} MiB or more (limits: {} MiB a member, {} MiB a document); refusing it as a likely zip bomb",
        size >> 20,
        MAX_MEMBER_BYTES >> 20,
        MAX_TOTAL_BYTES >> 20
    ))
}

/// A path inside the container, resolved against the directory of the part that names it
/// (`word/` + `../media/x.png`).
pub(super) fn resolve(base_dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        base_dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_with(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut out);
        for (name, data) in members {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn paths_resolve_against_the_naming_part() {
        assert_eq!(resolve("ppt", "slides/slide1.xml"), "ppt/slides/slide1.xml");
        assert_eq!(
            resolve("OEBPS/text", "../images/a.png"),
            "OEBPS/images/a.png"
        );
        assert_eq!(
            resolve("word", "/customXml/item1.xml"),
            "customXml/item1.xml"
        );
    }

    #[test]
    fn a_member_past_the_limit_is_refused_without_inflating_it_all() {
        let big = vec![b'a'; (MAX_MEMBER_BYTES + 10) as usize];
        let bytes = zip_with(&[("small.xml", b"<a/>"), ("big.xml", &big)]);
        assert!(bytes.len() < 1 << 20, "compresses well: {}", bytes.len());
        let mut archive = Archive::open(&bytes, "DOCX").unwrap();
        assert_eq!(archive.read("small.xml").unwrap().unwrap(), b"<a/>");
        assert_eq!(archive.read("absent.xml").unwrap(), None);
        let err = archive.read("big.xml").unwrap_err();
        assert!(err.to_string().contains("zip bomb"), "{err}");
        let err = Archive::open(&bytes, "XLSX")
            .unwrap()
            .check_all()
            .unwrap_err();
        assert!(err.to_string().contains("big.xml"), "{err}");
    }
}
