//! Token counting for chunk sizing, whatever the model's tokenizer is: a Hugging Face
//! `tokenizer.json` or one of OpenAI's tiktoken encodings.
//!
//! Invariant: a count here is the count the model's own tokenizer gives (no special
//! tokens), and it is what text-splitter sizes chunks by, so chunk boundaries for a
//! Hugging Face tokenizer are the same as before this type existed.

use std::sync::Arc;

use text_splitter::ChunkSizer;

/// Counts the tokens of a text.
pub trait CountTokens: Send + Sync {
    fn count_tokens(&self, text: &str) -> usize;
}

impl CountTokens for tokenizers::Tokenizer {
    fn count_tokens(&self, text: &str) -> usize {
        ChunkSizer::size(self, text)
    }
}

impl CountTokens for tiktoken_rs::CoreBPE {
    fn count_tokens(&self, text: &str) -> usize {
        self.encode_ordinary(text).len()
    }
}

/// A shared token counter.
#[derive(Clone)]
pub struct Tokens(Arc<dyn CountTokens>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    pub fn new(counter: impl CountTokens + 'static) -> Self {
        Self(Arc::new(counter))
    }

    pub fn count(&self, text: &str) -> usize {
        self.0.count_tokens(text)
    }

    /// Loads `cl100k_base`, `o200k_base` (bundled with the crate, no download) or a
    /// `tokenizer.json` path, with padding and truncation off.
    pub fn named(name: &str) -> Result<Self, String> {
        match name {
            "cl100k_base" => tiktoken_rs::cl100k_base()
                .map(Self::new)
                .map_err(|e| e.to_string()),
            "o200k_base" => tiktoken_rs::o200k_base()
                .map(Self::new)
                .map_err(|e| e.to_string()),
            path => {
                let dir = std::path::Path::new(path);
                let mut tokenizer =
                    tokenizers::Tokenizer::from_file(dir).map_err(|e| format!("{path}: {e}"))?;
                tokenizer.with_padding(None);
                tokenizer
                    .with_truncation(None)
                    .map_err(|e| format!("{path}: {e}"))?;
                Ok(Self::new(tokenizer))
            }
        }
    }
}

impl ChunkSizer for Tokens {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_encodings_are_bundled_and_count_like_tiktoken() {
        let cl100k = Tokens::named("cl100k_base").unwrap();
        // tiktoken's own documented example: "hello world" is two cl100k tokens.
        assert_eq!(cl100k.count("hello world"), 2);
        let o200k = Tokens::named("o200k_base").unwrap();
        assert!(o200k.count("tiktoken is great!") > 0);
        assert!(Tokens::named("/no/such/tokenizer.json").is_err());
    }
}
