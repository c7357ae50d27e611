//! `freshet eval`: scores an index against judged queries in the BEIR layout
//! (`queries.jsonl`, `qrels/<split>.tsv`) per query mode: nDCG@10, recall@10, recall@100,
//! MRR@10, and query latency.
//!
//! Invariants: a document's rank is that of its best chunk (chunks map to documents
//! through a payload field, optionally rewritten by a regex); metrics follow trec_eval's
//! definitions (graded gain = the judged score, unjudged documents gain nothing); every
//! mode of one run scores the same queries against the same index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::index::{Index, QueryOptions};
use crate::store::{Hit, QueryMode};
use crate::{Error, Result};

/// Documents scored per query: recall@100 needs the best 100 documents.
pub const DEPTH: usize = 100;

/// One judged query: its text and the graded relevance of documents (score > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedQuery {
    pub id: String,
    pub text: String,
    pub relevant: HashMap<String, u32>,
}

/// Reads `queries.jsonl` and `qrels/<split>.tsv` under `dir`. Queries without a positive
/// judgment are left out (as BEIR's evaluation does); a judgment naming an unknown query
/// is an error (a mismatched pair of files).
pub fn load_beir(dir: &Path, split: &str) -> Result<Vec<JudgedQuery>> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })
    };
    let invalid = |path: &Path, line: usize, what: String| Error::Io {
        context: format!("{}:{line}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    };
    let queries_path = dir.join("queries.jsonl");
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in read(&queries_path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|err| invalid(&queries_path, n + 1, format!("not JSON: {err}")))?;
        let id = match &value["_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(invalid(&queries_path, n + 1, "no `_id`".into())),
        };
        let text = value["text"]
            .as_str()
            .ok_or_else(|| invalid(&queries_path, n + 1, "no `text`".into()))?;
        texts.insert(id, text.to_string());
    }
    let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
    let mut judged: BTreeMap<String, HashMap<String, u32>> = BTreeMap::new();
    for (n, line) in read(&qrels_path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        if line.trim().is_empty() || (n == 0 && fields.first() == Some(&"query-id")) {
            continue;
        }
        let [query, doc, score] = fields[..] else {
            return Err(invalid(
                &qrels_path,
                n + 1,
                "expected query-id<TAB>corpus-id<TAB>score".into(),
            ));
        };
        let score: i64 = score.parse().map_err(|_| {
            invalid(
                &qrels_path,
                n + 1,
                format!("score `{score}` is not an integer"),
            )
        })?;
        if !texts.contains_key(query) {
            return Err(invalid(
                &qrels_path,
                n + 1,
                format!("query `{query}` is not in queries.jsonl"),
            ));
        }
        if score > 0 {
            judged
                .entry(query.to_string())
                .or_default()
                .insert(doc.to_string(), score as u32);
        }
    }
    Ok(judged
        .into_iter()
        .map(|(id, relevant)| JudgedQuery {
            text: texts[&id].clone(),
            id,
            relevant,
        })
        .collect())
}

/// How a chunk's payload names the judged document it came from.
#[derive(Debug, Clone)]
pub struct DocIds {
    /// The payload field holding the document's name (`doc_key` by default).
    pub field: String,
    /// Rewrites the field's value: the first capture group (or the whole match) is the
    /// judged id; a value it does not match is left as it is.
    pub pattern: Option<regex::Regex>,
}

impl Default for DocIds {
    fn default() -> Self {
        Self {
            field: "doc_key".into(),
            pattern: None,
        }
    }
}

impl DocIds {
    pub fn of(&self, hit: &Hit) -> Option<String> {
        let value = match hit.payload.get(&self.field)? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let Some(pattern) = &self.pattern else {
            return Some(value);
        };
        match pattern.captures(&value) {
            Some(caps) => Some(caps.get(1).or(caps.get(0))?.as_str().to_string()),
            None => Some(value),
        }
    }

    /// Documents in rank order, each at the rank of its best chunk.
    pub fn ranking(&self, hits: &[Hit]) -> Vec<String> {
        let mut seen = HashSet::new();
        hits.iter()
            .filter_map(|hit| self.of(hit))
            .filter(|doc| seen.insert(doc.clone()))
            .collect()
    }
}

/// nDCG@k with the judged score as the gain (trec_eval's `ndcg_cut`).
pub fn ndcg_at(ranking: &[String], relevant: &HashMap<String, u32>, k: usize) -> f64 {
    let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, doc)| relevant.get(doc).copied().unwrap_or(0) as f64 * discount(i))
        .sum();
    let mut ideal: Vec<u32> = relevant.values().copied().collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, gain)| *gain as f64 * discount(i))
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Share of the relevant documents found in the first `k`.
pub fn recall_at(ranking: &[String], relevant: &HashMap<String, u32>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranking
        .iter()
        .take(k)
        .filter(|doc| relevant.contains_key(*doc))
        .count();
    found as f64 / relevant.len() as f64
}

/// The reciprocal rank of the first relevant document within the first `k` (0 if none).
pub fn mrr_at(ranking: &[String], relevant: &HashMap<String, u32>, k: usize) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|doc| relevant.contains_key(doc))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// A way of ranking: a query mode, with or without the cross-encoder on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranking {
    pub mode: QueryMode,
    pub rerank: bool,
}

impl Ranking {
    pub fn name(&self) -> String {
        if self.rerank {
            format!("{}+rerank", self.mode)
        } else {
            self.mode.to_string()
        }
    }
}

impl std::str::FromStr for Ranking {
    type Err = String;

    /// `dense`, `sparse`, `hybrid`, each optionally with `+rerank`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (mode, rerank) = match s.strip_suffix("+rerank") {
            Some(mode) => (mode, true),
            None => (s, false),
        };
        Ok(Ranking {
            mode: mode.parse()?,
            rerank,
        })
    }
}

/// One mode's scores over the judged set.
#[derive(Debug, Clone, Serialize)]
pub struct ModeScores {
    pub mode: String,
    pub queries: usize,
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    /// Latency of a top-10 query (what an application asks), embedding included.
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
}

/// The `p`-th percentile (nearest rank) of `values`.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Scores `index` in each of `modes` over `queries`. Each query is asked twice per mode:
/// deep (enough chunks for 100 documents) for the metrics, and as a top-10 query for the
/// latency an application sees.
pub async fn evaluate(
    index: &Index,
    queries: &[JudgedQuery],
    rankings: &[Ranking],
    docs: &DocIds,
    chunks_per_query: usize,
) -> Result<Vec<ModeScores>> {
    let mut results = Vec::new();
    for ranking in rankings {
        let options = QueryOptions {
            mode: Some(ranking.mode),
            rerank: Some(ranking.rerank),
            filter: None,
        };
        // Warm-up: the first query loads what is loaded lazily (the reranker).
        if let Some(first) = queries.first() {
            index.query_with(&first.text, 10, &options).await?;
        }
        let (mut ndcg, mut r10, mut r100, mut mrr) = (0.0, 0.0, 0.0, 0.0);
        let mut latencies = Vec::with_capacity(queries.len());
        for query in queries {
            let started = Instant::now();
            index.query_with(&query.text, 10, &options).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            // With a reranker, the deep list is the reranked top `rerank_top_n`
            // followed by nothing: recall@100 then measures what reranking can see.
            let hits = index
                .query_with(&query.text, chunks_per_query.max(DEPTH), &options)
                .await?;
            let ranking = docs.ranking(&hits);
            ndcg += ndcg_at(&ranking, &query.relevant, 10);
            r10 += recall_at(&ranking, &query.relevant, 10);
            r100 += recall_at(&ranking, &query.relevant, DEPTH);
            mrr += mrr_at(&ranking, &query.relevant, 10);
        }
        let n = queries.len().max(1) as f64;
        results.push(ModeScores {
            mode: ranking.name(),
            queries: queries.len(),
            ndcg_at_10: ndcg / n,
            recall_at_10: r10 / n,
            recall_at_100: r100 / n,
            mrr_at_10: mrr / n,
            latency_p50_ms: percentile(&latencies, 50.0),
            latency_p95_ms: percentile(&latencies, 95.0),
        });
    }
    Ok(results)
}

/// The scores as a text table, one row per mode.
pub fn table(scores: &[ModeScores]) -> String {
    let mut out = format!(
        "{:<14} {:>7} {:>8} {:>9} {:>10} {:>7} {:>8} {:>8}\n",
        "mode", "queries", "nDCG@10", "recall@10", "recall@100", "MRR@10", "p50 ms", "p95 ms"
    );
    for s in scores {
        out.push_str(&format!(
            "{:<14} {:>7} {:>8.4} {:>9.4} {:>10.4} {:>7.4} {:>8.1} {:>8.1}\n",
            s.mode,
            s.queries,
            s.ndcg_at_10,
            s.recall_at_10,
            s.recall_at_100,
            s.mrr_at_10,
            s.latency_p50_ms,
            s.latency_p95_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(d, s)| (d.to_string(), *s)).collect()
    }

    fn docs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_follow_trec_eval() {
        let relevant = rel(&[("a", 2), ("b", 1)]);
        // Ideal order: a then b.
        assert!((ndcg_at(&docs(&["a", "b", "x"]), &relevant, 10) - 1.0).abs() < 1e-12);
        // b first, a second: DCG = 1/log2(2) + 2/log2(3); IDCG = 2 + 1/log2(3).
        let dcg = 1.0 + 2.0 / 3f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at(&docs(&["b", "a"]), &relevant, 10) - dcg / idcg).abs() < 1e-12);
        assert_eq!(ndcg_at(&docs(&["x", "y"]), &relevant, 10), 0.0);
        // Cut at k: a relevant document at rank 3 does not count at k = 2.
        assert_eq!(recall_at(&docs(&["x", "y", "a"]), &relevant, 2), 0.0);
        assert_eq!(recall_at(&docs(&["x", "y", "a"]), &relevant, 3), 0.5);
        assert_eq!(mrr_at(&docs(&["x", "b", "a"]), &relevant, 10), 0.5);
        assert_eq!(mrr_at(&docs(&["x", "y"]), &relevant, 10), 0.0);
    }

    #[test]
    fn documents_rank_by_their_best_chunk_through_the_id_pattern() {
        let hit = |key: &str| Hit {
            id: uuid::Uuid::new_v4(),
            score: 0.0,
            payload: serde_json::json!({ "doc_key": key })
                .as_object()
                .unwrap()
                .clone(),
        };
        let hits = [
            hit("corpus/12.txt"),
            hit("corpus/7.txt"),
            hit("corpus/12.txt"),
        ];
        let plain = DocIds::default();
        assert_eq!(plain.ranking(&hits), ["corpus/12.txt", "corpus/7.txt"]);
        let mapped = DocIds {
            field: "doc_key".into(),
            pattern: Some(regex::Regex::new(r"(\d+)\.txt$").unwrap()),
        };
        assert_eq!(mapped.ranking(&hits), ["12", "7"]);
    }

    #[test]
    fn beir_files_load_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("qrels")).unwrap();
        std::fs::write(
            dir.path().join("queries.jsonl"),
            "{\"_id\": \"1\", \"text\": \"first\"}\n{\"_id\": 2, \"text\": \"second\"}\n{\"_id\": \"3\", \"text\": \"unjudged\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\n1\tdoc-a\t1\n2\tdoc-b\t2\n2\tdoc-c\t0\n",
        )
        .unwrap();
        let set = load_beir(dir.path(), "test").unwrap();
        assert_eq!(set.len(), 2, "the unjudged query is left out");
        assert_eq!(
            set[1].relevant,
            rel(&[("doc-b", 2)]),
            "score 0 is not relevant"
        );
        std::fs::write(dir.path().join("qrels/test.tsv"), "9\tdoc-a\t1\n").unwrap();
        let err = load_beir(dir.path(), "test").unwrap_err().to_string();
        assert!(err.contains("test.tsv:1") && err.contains("`9`"), "{err}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 10.0);
        assert_eq!(percentile(&values, 95.0), 19.0);
        assert_eq!(percentile(&[], 95.0), 0.0);
    }
}
