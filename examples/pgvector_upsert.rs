//! How a batch of points is best written to pgvector: `INSERT .. SELECT FROM UNNEST(..)
//! ON CONFLICT DO UPDATE` against `COPY` into a staging table then `INSERT .. ON
//! CONFLICT`, side by side on the same server, the same points and the same table shape
//! (HNSW index included). Prints figures; asserts nothing.
//!
//! Run: `cargo run --example pgvector_upsert -- [--points 20000] [--batch 256]` with
//! `FRESHET_PGVECTOR_URL` set (`scripts/pgvector start` prints one).

use std::time::Instant;

use freshet::config::PgvectorConfig;
use freshet::store::{Catalog, IndexInfo, PgvectorCatalog, Point, UpsertMethod};

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Points shaped like freshet's: 384 dimensions and a payload with ~1 KB of chunk text.
fn points(n: usize, round: usize) -> Vec<Point> {
    let words = [
        "harbour", "ferry", "river", "engine", "ledger", "signal", "garden", "vector",
    ];
    (0..n)
        .map(|i| {
            let text: String = (0..150)
                .map(|w| words[(i * 7 + w * 3 + round) % words.len()])
                .collect::<Vec<_>>()
                .join(" ");
            let serde_json::Value::Object(payload) = serde_json::json!({
                "source_id": "bench",
                "doc_key": format!("docs/{}.md", i / 4),
                "chunk_index": i % 4,
                "text": text,
                "byte_start": 0, "byte_end": 1000, "page": null, "page_end": null,
                "heading_path": ["Guide", "Section"], "title": "Guide",
                "media_type": "markdown", "content_hash": format!("{i:064x}"),
                "chunk_hash": format!("{:064x}", i * 31 + round),
                "fingerprint": "extractor=v1;max_tokens=256;overlap=32;model=m;dim=384",
                "decode_warning": null, "indexed_at": "2026-12-02T00:00:00Z",
            }) else {
                unreachable!()
            };
            let vector = (0..384)
                .map(|d| ((i * 131 + d * 17 + round) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            Point {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{i}").as_bytes()),
                vector,
                sparse: None,
                payload,
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let total = flag(&args, "--points", 20_000);
    let batch = flag(&args, "--batch", 256);
    println!("pgvector upsert methods: {total} points of 384 dims + ~1 KB payload, {batch} per transaction");
    let mut results = Vec::new();
    // Two rounds, alternating the order, so neither method always runs on a warmer server.
    for round in 0..2 {
        let methods = if round == 0 {
            [UpsertMethod::UnnestInsert, UpsertMethod::CopyStaging]
        } else {
            [UpsertMethod::CopyStaging, UpsertMethod::UnnestInsert]
        };
        for method in methods {
            let table = format!("upsert_bench_{}", uuid::Uuid::new_v4().simple())[..24].to_string();
            let catalog = PgvectorCatalog::connect(&PgvectorConfig {
                url_env: "FRESHET_PGVECTOR_URL".into(),
                schema: "public".into(),
                table: table.clone(),
                ef_search: 100,
                timeout_s: 30,
                batch_rows: 500,
            })
            .await?;
            let info = IndexInfo {
                collection: catalog.collection_name("bench", 384, None),
                model_id: "bench".into(),
                dim: 384,
                sparse: None,
            };
            let store = catalog.open_table(&info).await?;
            let all = points(total, round);
            // Fresh inserts, then the same ids again (overwrites, as re-indexing does).
            let mut seconds = [0f64; 2];
            for (pass, elapsed) in seconds.iter_mut().enumerate() {
                let started = Instant::now();
                for chunk in all.chunks(batch) {
                    store.upsert_with(chunk, method).await?;
                }
                *elapsed = started.elapsed().as_secs_f64();
                let _ = pass;
            }
            println!(
                "  round {round} {:<14} insert {:>8.0} points/s   overwrite {:>8.0} points/s",
                format!("{method:?}"),
                total as f64 / seconds[0],
                total as f64 / seconds[1]
            );
            results.push((method, seconds));
            let pool = sqlx::PgPool::connect(&std::env::var("FRESHET_PGVECTOR_URL")?).await?;
            sqlx::query(&format!(
                "DROP TABLE IF EXISTS public.\"{}\"",
                info.collection
            ))
            .execute(&pool)
            .await?;
        }
    }
    let mean = |m: UpsertMethod, pass: usize| {
        let runs: Vec<f64> = results
            .iter()
            .filter(|r| r.0 == m)
            .map(|r| r.1[pass])
            .collect();
        total as f64 * runs.len() as f64 / runs.iter().sum::<f64>()
    };
    for (pass, name) in [(0, "insert"), (1, "overwrite")] {
        let unnest = mean(UpsertMethod::UnnestInsert, pass);
        let copy = mean(UpsertMethod::CopyStaging, pass);
        println!(
            "{name:<9}: UNNEST {unnest:>8.0} points/s, COPY {copy:>8.0} points/s, COPY/UNNEST = {:.2}",
            copy / unnest
        );
    }
    println!("the store uses {:?}", UpsertMethod::FASTEST);
    Ok(())
}
