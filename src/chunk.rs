//! Clean text -> chunks sized in tokens of the embedding model's own tokenizer, each with
//! its byte range, page and heading path.
//!
//! Invariant: chunking is deterministic: the same text and settings give the same chunks
//! (texts, ranges, hashes) in the same order, so chunk identities are stable across runs.

use serde::Serialize;
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use crate::config::{ChunkContext, ChunkingConfig};
use crate::embed::Tokens;
use crate::extract::{Extracted, MediaType};

/// Bumped when chunk boundaries or embedded text can change for the same input; part of
/// the pipeline fingerprint.
pub const CHUNKER_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    pub index: u32,
    /// The chunk as stored in the payload and shown to users.
    pub text: String,
    /// Byte range of `text` in the extracted (clean) text of the document.
    pub byte_start: usize,
    pub byte_end: usize,
    /// Page of the chunk's first byte (PDF).
    pub page: Option<u32>,
    /// Page of the chunk's last byte, when it differs from `page`.
    pub page_end: Option<u32>,
    pub heading_path: Vec<String>,
    /// What the model embeds: the text, prefixed by its heading path (or the document
    /// title) so a chunk cut from its context still carries it.
    pub embed_text: String,
    /// blake3 of `embed_text`: two chunks with the same hash get the same vector.
    pub hash: String,
}

pub struct Chunker {
    tokenizer: Tokens,
    settings: ChunkingConfig,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Chunker {
    /// `tokenizer` counts tokens as the embedding model does (see [`Tokens`]).
    pub fn new(tokenizer: Tokens, settings: ChunkingConfig) -> Self {
        Self {
            tokenizer,
            settings,
        }
    }

    /// A short, stable description of everything that decides chunk boundaries.
    pub fn fingerprint(&self) -> String {
        format!(
            "chunker=v{CHUNKER_VERSION};max_tokens={};overlap={};context={}",
            self.settings.max_tokens,
            self.settings.overlap_tokens,
            match self.settings.context {
                ChunkContext::Heading => "heading",
                ChunkContext::None => "none",
            }
        )
    }

    /// Splits a document's own text (the documents carried inside it are chunked as
    /// documents of their own). Pure and CPU-bound: call it off the async runtime.
    pub fn chunk(&self, doc: &Extracted, media: MediaType) -> Vec<Chunk> {
        let config = ChunkConfig::new(self.settings.max_tokens)
            .with_sizer(&self.tokenizer)
            .with_overlap(self.settings.overlap_tokens)
            .expect("validated: overlap is less than the chunk size");
        let pieces: Vec<(usize, &str)> = if media.is_markdown_like() {
            MarkdownSplitter::new(config)
                .chunk_indices(&doc.text)
                .collect()
        } else {
            TextSplitter::new(config).chunk_indices(&doc.text).collect()
        };
        pieces
            .into_iter()
            .filter(|(_, text)| !text.trim().is_empty())
            .enumerate()
            .map(|(index, (start, text))| {
                let end = start + text.len();
                let page = doc.page_at(start);
                let page_end = doc
                    .page_at(end.saturating_sub(1))
                    .filter(|p| Some(*p) != page);
                let heading_path = doc.heading_path_at(start).to_vec();
                let embed_text = match self.settings.context {
                    ChunkContext::Heading => {
                        contextual_text(&heading_path, doc.title.as_deref(), text)
                    }
                    ChunkContext::None => text.to_string(),
                };
                let hash = blake3::hash(embed_text.as_bytes()).to_hex().to_string();
                Chunk {
                    index: index as u32,
                    text: text.to_string(),
                    byte_start: start,
                    byte_end: end,
                    page,
                    page_end,
                    heading_path,
                    embed_text,
                    hash,
                }
            })
            .collect()
    }
}

/// The heading path (or the title when there is none) on a line of its own before the
/// text, unless the text already starts with it.
fn contextual_text(heading_path: &[String], title: Option<&str>, text: &str) -> String {
    let context = if heading_path.is_empty() {
        title.unwrap_or_default().to_string()
    } else {
        heading_path.join(" > ")
    };
    let last = heading_path.last().map(String::as_str).or(title);
    let already_there = last.is_some_and(|h| text.trim_start_matches(['#', ' ']).starts_with(h))
        && heading_path.len() <= 1;
    if context.is_empty() || already_there {
        text.to_string()
    } else {
        format!("{context}\n\n{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real WordPiece tokenizer built in memory: tests beside the code must not depend on
    /// the provisioned model, and chunking only needs token counts.
    fn tokenizer() -> Tokens {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let mut vocab = std::collections::HashMap::new();
        vocab.insert("[UNK]".to_string(), 0u32);
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        Tokens::new(tokenizer)
    }

    fn doc(text: &str) -> Extracted {
        Extracted {
            text: text.into(),
            page_starts: vec![],
            sections: crate::extract::markdown_sections(text),
            title: None,
            decode_warning: None,
            metadata: Default::default(),
            parts: Vec::new(),
        }
    }

    fn long_markdown() -> String {
        let mut text = String::from("# Guide\n\n");
        for section in 0..6 {
            text.push_str(&format!("## Part {section}\n\n"));
            for sentence in 0..30 {
                text.push_str(&format!(
                    "Sentence {sentence} of part {section} says something. "
                ));
            }
            text.push_str("\n\n");
        }
        text
    }

    #[test]
    fn chunking_is_deterministic_and_sized() {
        let settings = ChunkingConfig {
            max_tokens: 64,
            overlap_tokens: 8,
            ..Default::default()
        };
        let chunker = Chunker::new(tokenizer(), settings);
        let text = long_markdown();
        let a = chunker.chunk(&doc(&text), MediaType::Markdown);
        let b = chunker.chunk(&doc(&text), MediaType::Markdown);
        assert_eq!(a, b);
        assert!(a.len() > 5, "{} chunks", a.len());
        for chunk in &a {
            assert_eq!(&text[chunk.byte_start..chunk.byte_end], chunk.text);
            let tokens = chunker.tokenizer.count(&chunk.text);
            assert!(tokens <= 64, "chunk {} has {tokens} tokens", chunk.index);
        }
        let indices: Vec<u32> = a.iter().map(|c| c.index).collect();
        assert_eq!(indices, (0..a.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_carry_heading_paths_and_context() {
        let chunker = Chunker::new(
            tokenizer(),
            ChunkingConfig {
                max_tokens: 64,
                overlap_tokens: 0,
                ..Default::default()
            },
        );
        let text = long_markdown();
        let chunks = chunker.chunk(&doc(&text), MediaType::Markdown);
        let in_part3 = chunks
            .iter()
            .find(|c| c.text.contains("of part 3") && !c.text.contains("## Part 3"))
            .unwrap();
        assert_eq!(in_part3.heading_path, ["Guide", "Part 3"]);
        assert!(in_part3.embed_text.starts_with("Guide > Part 3\n\n"));
    }

    #[test]
    fn pages_follow_byte_offsets() {
        let chunker = Chunker::new(
            tokenizer(),
            ChunkingConfig {
                max_tokens: 16,
                overlap_tokens: 0,
                ..Default::default()
            },
        );
        let page1 = "alpha ".repeat(30);
        let page2 = "beta ".repeat(30);
        let text = format!("{}\n\n{}", page1.trim(), page2.trim());
        let extracted = Extracted {
            page_starts: vec![(0, 1), (page1.trim().len() + 2, 2)],
            ..doc(&text)
        };
        let chunks = chunker.chunk(&extracted, MediaType::Pdf);
        assert!(chunks
            .iter()
            .any(|c| c.page == Some(1) && c.text.contains("alpha")));
        assert!(chunks
            .iter()
            .filter(|c| c.text.starts_with("beta"))
            .all(|c| c.page == Some(2)));
    }
}
