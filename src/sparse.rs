//! The keyword side of hybrid retrieval: BM25 term weights of chunks and queries as
//! sparse vectors, computed by the Qdrant engine's own BM25 (the one its server runs for
//! `qdrant/bm25` documents).
//!
//! Invariant: the vectors are wire-compatible with fastembed's `Qdrant/bm25` model
//! (lower-casing, its word tokens, English stopwords, Snowball stemming, murmur3 token
//! ids, `k1 = 1.2`, `b = 0.75`, average length 256), so an application using fastembed
//! in Python, JS or Rust computes the same query vector; the engine's IDF modifier
//! supplies the document frequencies, so nothing here depends on the rest of the corpus.
//! The engine's own word tokenizer splits at underscores, fastembed's does not: words are
//! cut here the fastembed way and handed to the engine's BM25 one per whitespace.

use std::sync::LazyLock;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::TokenizerType;
use serde::{Deserialize, Serialize};

/// fastembed's `token_max_length`: longer words (before stemming) are dropped.
const MAX_WORD_CHARS: usize = 40;

/// Not a word character in Python's `re` (`\w`: letters, numbers, underscore).
static NOT_WORD: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"[^\p{L}\p{N}_]+").expect("a valid pattern"));

/// fastembed's `SimpleTokenizer` after `remove_non_alphanumeric`: the lower-cased text's
/// runs of word characters, without those longer than 40 characters, space-separated.
fn fastembed_words(text: &str) -> String {
    let lower = text.to_lowercase();
    let spaced = NOT_WORD.replace_all(&lower, " ");
    spaced
        .split_whitespace()
        .filter(|word| word.chars().count() <= MAX_WORD_CHARS)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Term ids (murmur3 of the stemmed token) and their weights, ids ascending and unique.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseVector {
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Computes BM25 sparse vectors; cheap to share (no state beyond its settings).
pub struct Bm25Encoder {
    model: EdgeBm25,
}

impl std::fmt::Debug for Bm25Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bm25Encoder(qdrant/bm25, english)")
    }
}

impl Default for Bm25Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Bm25Encoder {
    /// fastembed's `Qdrant/bm25` defaults (English).
    pub fn new() -> Self {
        let config = EdgeBm25Config {
            tokenizer: TokenizerType::Whitespace,
            ..EdgeBm25Config::default()
        };
        let model = EdgeBm25::new(config).expect("the default BM25 settings are valid");
        Self { model }
    }

    /// A chunk's term weights: `tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`.
    pub fn document(&self, text: &str) -> SparseVector {
        let v = self.model.embed_document(&fastembed_words(text));
        sorted(v.indices, v.values)
    }

    /// A query's terms, each with weight 1 (the engine multiplies in the IDF).
    pub fn query(&self, text: &str) -> SparseVector {
        let v = self.model.embed_query(&fastembed_words(text));
        sorted(v.indices, v.values)
    }
}

fn sorted(indices: Vec<u32>, values: Vec<f32>) -> SparseVector {
    let mut pairs: Vec<(u32, f32)> = indices.into_iter().zip(values).collect();
    pairs.sort_by_key(|(i, _)| *i);
    let (indices, values) = pairs.into_iter().unzip();
    SparseVector { indices, values }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected ids and weights come from a Python script that repeats fastembed 0.9.1's
    /// `Bm25` steps with the packages it uses (its `remove_non_alphanumeric` and
    /// `SimpleTokenizer` regexes, the NLTK English stopwords, `py_rust_stemmers` Snowball
    /// English, `abs(mmh3.hash(token))`, k1 = 1.2, b = 0.75, avg_len = 256); the stemmed
    /// token is in the comment.
    #[test]
    fn document_vectors_match_fastembed_qdrant_bm25() {
        let encoder = Bm25Encoder::new();
        let cases: [(&str, &[(u32, f64)]); 3] = [
            (
                // Underscores join a word, accents stay, a 41-character word is dropped,
                // "don't" leaves two stopwords.
                "Café crème: naïve Ünïcödé tokens_with_underscores; a 41-char word abcdefghijabcdefghijabcdefghijabcdefghija stays out, don't it?",
                &[
                    (380852360, 1.6520973892637139),  // tokens_with_underscor
                    (605818632, 1.6520973892637139),  // café
                    (697211857, 1.6520973892637139),  // 41
                    (756638508, 1.6520973892637139),  // naïv
                    (968174432, 1.6520973892637139),  // word
                    (1223336437, 1.6520973892637139), // char
                    (1881538586, 1.6520973892637139), // stay
                    (2069557956, 1.6520973892637139), // ünïcödé
                    (2073738215, 1.6520973892637139), // crème
                ],
            ),
            (
                "Sourdough starters ferment flour and water; feeding the starter twice daily keeps it active.",
                &[
                    (68044879, 1.6434199007878614),   // flour
                    (116350199, 1.6434199007878614),  // activ
                    (267423639, 1.6434199007878614),  // sourdough
                    (728165346, 1.6434199007878614),  // keep
                    (766895321, 1.6434199007878614),  // daili
                    (918197339, 1.6434199007878614),  // water
                    (1049114592, 1.6434199007878614), // feed
                    (1353893365, 1.8814097210623018), // starter (twice)
                    (1975115648, 1.6434199007878614), // twice
                    (1975737238, 1.6434199007878614), // ferment
                ],
            ),
            (
                "ERR_CONN_RESET: connection resets on port 8080",
                &[
                    (108013591, 1.6697302104951084),  // port
                    (231143699, 1.6697302104951084),  // 8080
                    (1223115691, 1.6697302104951084), // connect
                    (1294045141, 1.6697302104951084), // err_conn_reset
                    (1587210028, 1.6697302104951084), // reset
                ],
            ),
        ];
        for (text, expected) in cases {
            let got = encoder.document(text);
            let want: Vec<u32> = expected.iter().map(|(i, _)| *i).collect();
            assert_eq!(got.indices, want, "token ids of {text:?}");
            for ((_, w), v) in expected.iter().zip(&got.values) {
                assert!(
                    (*w as f32 - v).abs() < 1e-5,
                    "{text:?}: weight {v}, want {w}"
                );
            }
        }
    }

    #[test]
    fn queries_have_unit_weights_and_drop_stopwords() {
        let encoder = Bm25Encoder::new();
        let q = encoder.query("What is the port of the connection?");
        let d = encoder.document("port connection");
        assert_eq!(q.indices, d.indices);
        assert!(q.values.iter().all(|&v| v == 1.0));
        assert!(encoder.query("the of and").is_empty());
    }
}
