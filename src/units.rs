//! Work units: a source, or one hash partition of it (`partitions = N`). A unit is what
//! one worker holds at a time, and what scan state (cursor, checks, last full scan) is
//! kept for.
//!
//! Invariant: the units of a source cover each of its documents exactly once, and a
//! document's point ids never depend on its unit, so changing `partitions` moves work
//! between units without re-indexing anything.

use freshet_connectors::Partition;

use crate::config::{Config, SourceConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The source id, or `<source>#<i>/<n>` for partition `i` of `n`.
    pub id: String,
    pub source_id: String,
    pub partition: Option<Partition>,
}

impl Unit {
    /// A whole source as one unit.
    pub fn whole(source_id: &str) -> Self {
        Self {
            id: source_id.to_string(),
            source_id: source_id.to_string(),
            partition: None,
        }
    }

    /// The units a configured source is split into.
    pub fn of(source: &SourceConfig) -> Vec<Unit> {
        let count = source.partitions();
        if count <= 1 {
            return vec![Self::whole(source.id())];
        }
        (0..count)
            .map(|i| {
                let partition = Partition::new(i, count);
                Unit {
                    id: format!("{}#{partition}", source.id()),
                    source_id: source.id().to_string(),
                    partition: Some(partition),
                }
            })
            .collect()
    }
}

/// Every unit of every configured source, in config order.
pub fn all(config: &Config) -> Vec<(&SourceConfig, Unit)> {
    config
        .sources
        .iter()
        .flat_map(|source| Unit::of(source).into_iter().map(move |unit| (source, unit)))
        .collect()
}

/// The ids of every configured unit.
pub fn ids(config: &Config) -> Vec<String> {
    all(config).into_iter().map(|(_, unit)| unit.id).collect()
}

/// How many units a worker should hold: an even share among `workers`, rounded up.
pub fn fair_share(units: usize, workers: usize) -> usize {
    units.div_ceil(workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpartitioned_source_is_one_unit_named_like_it() {
        let config = Config::for_folder(std::path::Path::new("/tmp"));
        let units = all(&config);
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].1.id, config.sources[0].id());
        assert_eq!(units[0].1.partition, None);
    }

    #[test]
    fn partitions_become_units_that_name_their_share() {
        let mut config = Config::for_folder(std::path::Path::new("/tmp"));
        if let SourceConfig::Folder(folder) = &mut config.sources[0] {
            folder.id = "docs".into();
            folder.partitions = 3;
        }
        let ids = ids(&config);
        assert_eq!(ids, ["docs#0/3", "docs#1/3", "docs#2/3"]);
    }

    #[test]
    fn shares_round_up_so_every_unit_finds_a_worker() {
        assert_eq!(fair_share(6, 3), 2);
        assert_eq!(fair_share(6, 4), 2);
        assert_eq!(fair_share(7, 3), 3);
        assert_eq!(fair_share(6, 0), 6);
    }
}
