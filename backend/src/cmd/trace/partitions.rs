//! The partition table that names the parts of a disk in trace reports:
//! recorded in the trace header by `serve --trace` (format version 2), or
//! read from `ocidisk inspect --json` for version 1 traces.

use crate::metrics::trace::TracePartition;
use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::path::Path;

/// Sector size of the LBAs in `ocidisk inspect --json`.
const SECTOR: u64 = 512;

/// A partition as `ocidisk inspect --json` lists it (other fields ignored).
#[derive(Deserialize, Clone, Debug)]
struct PartitionJson {
    index: u32,
    name: String,
    first_lba: u64,
    last_lba: u64,
}

#[derive(Deserialize)]
struct LayoutJson {
    partitions: Vec<PartitionJson>,
}

/// Non-overlapping partitions sorted by start.
#[derive(Default, Debug, Clone)]
pub struct Partitions(Vec<TracePartition>);

impl Partitions {
    /// Reads the partitions from `ocidisk inspect --json` output.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read(path).with_context(|| format!("reading layout {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("layout {}", path.display()))
    }

    /// Parses `ocidisk inspect --json` output.
    pub fn parse(text: &[u8]) -> anyhow::Result<Self> {
        let layout: LayoutJson =
            serde_json::from_slice(text).context("not the JSON of `ocidisk inspect --json`")?;
        let mut parts = Vec::with_capacity(layout.partitions.len());
        for p in layout.partitions {
            let range = p.first_lba.checked_mul(SECTOR).zip(
                p.last_lba
                    .checked_add(1)
                    .and_then(|l| l.checked_mul(SECTOR)),
            );
            let Some((start, end)) = range.filter(|_| p.first_lba <= p.last_lba) else {
                bail!(
                    "partition {} ({}): LBAs {}..={} are not a range of 512-byte sectors",
                    p.index,
                    p.name,
                    p.first_lba,
                    p.last_lba
                );
            };
            parts.push(TracePartition {
                index: p.index,
                name: p.name,
                start,
                end,
            });
        }
        Self::new(parts)
    }

    /// The partitions a trace header records; an overlapping table (only a
    /// corrupt or hand-made trace has one) is an error naming the two.
    pub fn new(mut parts: Vec<TracePartition>) -> anyhow::Result<Self> {
        parts.sort_by_key(|p| p.start);
        if let Some(w) = parts.windows(2).find(|w| w[0].end > w[1].start) {
            bail!(
                "partitions {} ({}) and {} ({}) overlap",
                w[0].index,
                w[0].name,
                w[1].index,
                w[1].name
            );
        }
        Ok(Partitions(parts))
    }

    /// The partitions, sorted by start.
    pub fn list(&self) -> &[TracePartition] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The position in [`list`](Self::list) of the partition holding byte
    /// `offset`.
    pub fn position(&self, offset: u64) -> Option<usize> {
        let i = self.0.partition_point(|p| p.start <= offset);
        i.checked_sub(1).filter(|&j| offset < self.0[j].end)
    }

    /// The partition holding byte `offset`.
    pub fn find(&self, offset: u64) -> Option<&TracePartition> {
        self.position(offset).map(|i| &self.0[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_layouts_are_errors_naming_the_problem() {
        for (json, want) in [
            (&br#"{"partitions": [{"index": 1, "name": "A", "first_lba": 10, "last_lba": 5}]}"#[..], "partition 1 (A)"),
            (br#"{"partitions": [{"index": 1, "name": "A", "first_lba": 0, "last_lba": 18446744073709551615}]}"#, "partition 1 (A)"),
            (br#"{"partitions": [{"index": 1, "name": "A", "first_lba": 0, "last_lba": 10},
                                 {"index": 2, "name": "B", "first_lba": 10, "last_lba": 20}]}"#, "overlap"),
            (br#"{"partitions": 3}"#, "inspect --json"),
            (b"not json", "inspect --json"),
        ] {
            let err = format!("{:#}", Partitions::parse(json).unwrap_err());
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn finds_the_partition_of_an_offset() {
        let p = Partitions::new(vec![
            TracePartition {
                index: 2,
                name: "B".into(),
                start: 100,
                end: 200,
            },
            TracePartition {
                index: 1,
                name: "A".into(),
                start: 10,
                end: 50,
            },
        ])
        .unwrap();
        let name = |o| p.find(o).map(|x| x.name.as_str());
        assert_eq!(
            [name(0), name(10), name(49), name(50), name(150), name(200)],
            [None, Some("A"), Some("A"), None, Some("B"), None]
        );
    }
}
