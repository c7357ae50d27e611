//! A flat, streaming view of an XML part (open, close, text) for the Office, OpenDocument
//! and EPUB readers.
//!
//! Invariant: nothing here recurses or builds a tree, so a deeply nested or huge part
//! costs memory in proportion to its text only; malformed XML is an error, never a panic.

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::ExtractError;

/// One step through an XML part. An empty element (`<a/>`) arrives as `Open` then `Close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum XmlEvent {
    Open(Element),
    Close(String),
    Text(String),
}

/// An element's local name (prefix dropped) and its attributes (names as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
}

impl Element {
    /// An attribute by its name as written (`r:id`), or by its local name (`id`) when the
    /// name asked for has no prefix.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| {
                key == name || (!name.contains(':') && key.rsplit(':').next() == Some(name))
            })
            .map(|(_, value)| value.as_str())
    }
}

/// Streams a part's events to `visit`, in document order; text may arrive in several
/// pieces. `what` names the part in errors.
pub(super) fn walk(
    xml: &[u8],
    what: &str,
    mut visit: impl FnMut(XmlEvent) -> Result<(), ExtractError>,
) -> Result<(), ExtractError> {
    let text = String::from_utf8_lossy(xml);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = false;
    let invalid = |err: &dyn std::fmt::Display| {
        ExtractError::Invalid(format!(
            "malformed XML in {what}: {err}; re-save the document or exclude it"
        ))
    };
    loop {
        match reader.read_event().map_err(|e| invalid(&e))? {
            Event::Start(start) => visit(XmlEvent::Open(element(&start)))?,
            Event::Empty(start) => {
                let element = element(&start);
                let name = element.name.clone();
                visit(XmlEvent::Open(element))?;
                visit(XmlEvent::Close(name))?;
            }
            Event::End(end) => visit(XmlEvent::Close(local(end.name().as_ref())))?,
            Event::Text(text) => visit(XmlEvent::Text(text.xml10_content().into_owned()))?,
            Event::CData(data) => visit(XmlEvent::Text(data.xml10_content().into_owned()))?,
            Event::GeneralRef(reference) => {
                if let Ok(Some(c)) = reference.resolve_char_ref() {
                    visit(XmlEvent::Text(c.to_string()))?;
                } else if let Some(s) = resolve_predefined_entity(&reference) {
                    visit(XmlEvent::Text(s.to_string()))?;
                }
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// All of a part's events, text pieces merged (for small parts: manifests, relationships).
pub(super) fn events(xml: &[u8], what: &str) -> Result<Vec<XmlEvent>, ExtractError> {
    let mut out = Vec::new();
    walk(xml, what, |event| {
        match (event, out.last_mut()) {
            (XmlEvent::Text(more), Some(XmlEvent::Text(last))) => last.push_str(&more),
            (event, _) => out.push(event),
        }
        Ok(())
    })?;
    Ok(out)
}

/// The trimmed text of the first element with this local name (a `dc:title`), if any.
pub(super) fn element_text(events: &[XmlEvent], name: &str) -> Option<String> {
    let start = events
        .iter()
        .position(|e| matches!(e, XmlEvent::Open(el) if el.name == name))?;
    let mut text = String::new();
    for event in &events[start + 1..] {
        match event {
            XmlEvent::Text(piece) => text.push_str(piece),
            XmlEvent::Close(closed) if closed == name => break,
            _ => {}
        }
    }
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_string()
}

fn element(start: &quick_xml::events::BytesStart) -> Element {
    let attrs = start
        .attributes()
        .with_checks(false)
        .flatten()
        .map(|a| {
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| a.value.to_string());
            (a.key.as_ref().to_string(), value)
        })
        .collect();
    Element {
        name: local(start.name().as_ref()),
        attrs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_events_with_entities_and_empty_elements() {
        let events = events(
            br#"<w:p a:x="1 &amp; 2"><w:t>Tom &amp; Jerry&#8217;s</w:t><w:br/></w:p>"#,
            "test",
        )
        .unwrap();
        let XmlEvent::Open(p) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((p.name.as_str(), p.attr("x")), ("p", Some("1 & 2")));
        assert_eq!(events[2], XmlEvent::Text("Tom & Jerry\u{2019}s".into()));
        assert_eq!(
            events[4],
            XmlEvent::Open(Element {
                name: "br".into(),
                attrs: vec![]
            })
        );
        assert_eq!(events[5], XmlEvent::Close("br".into()));
        let meta = super::events(
            b"<m><dc:title> A <b>bold</b> title </dc:title><title>second</title></m>",
            "meta",
        )
        .unwrap();
        assert_eq!(
            element_text(&meta, "title").as_deref(),
            Some("A bold title")
        );
        assert_eq!(element_text(&meta, "subject"), None);
    }
}
