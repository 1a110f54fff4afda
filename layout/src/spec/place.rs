//! Where each partition goes: Monogon's first-fit placement.

use crate::gpt::{self, SECTOR_SIZE};
use crate::spec::error::{Problem, SpecError};
use crate::spec::{LayoutSpec, Placement, Size, ALIGNMENT};

impl LayoutSpec {
    /// Places the partitions (see the module documentation).
    pub fn place(&self) -> Result<Vec<Placement>, SpecError> {
        self.place_in("layout")
    }

    pub(super) fn place_in(&self, origin: &str) -> Result<Vec<Placement>, SpecError> {
        let blocks = self.disk_size / SECTOR_SIZE;
        let align = ALIGNMENT / SECTOR_SIZE;
        // Half-open block ranges already taken, sorted.
        let mut taken: Vec<(u64, u64)> = Vec::with_capacity(self.partitions.len());
        let mut placed = Vec::with_capacity(self.partitions.len());
        let usable_end = gpt::last_usable_lba(blocks) + 1;
        for (i, p) in self.partitions.iter().enumerate() {
            // Free gaps, each with its start rounded up to the alignment
            // (gaps that vanish by rounding are dropped).
            let mut gaps = Vec::with_capacity(taken.len() + 1);
            let mut pos = gpt::FIRST_USABLE_LBA;
            for &(start, end) in taken.iter().chain([(usable_end, usable_end)].iter()) {
                let aligned = pos.div_ceil(align) * align;
                if aligned < start {
                    gaps.push((aligned, start - aligned));
                }
                pos = pos.max(end);
            }
            let largest = gaps.iter().map(|g| g.1).max().unwrap_or(0);
            let need = match p.size {
                Size::Bytes(n) => n.div_ceil(SECTOR_SIZE),
                Size::Rest => largest / align * align,
            };
            let Some(&(start, _)) = gaps.iter().find(|g| need > 0 && g.1 >= need) else {
                return Err(SpecError::Field {
                    origin: origin.to_owned(),
                    field: format!("partitions[{i}].size"),
                    problem: Problem::DoesNotFit {
                        need: match p.size {
                            Size::Bytes(n) => n,
                            Size::Rest => align * SECTOR_SIZE,
                        },
                        largest: largest * SECTOR_SIZE,
                    },
                });
            };
            let end = start + need;
            let at = taken.partition_point(|t| t.0 < start);
            taken.insert(at, (start, end));
            placed.push(Placement {
                first_lba: start,
                last_lba: end - 1,
            });
        }
        Ok(placed)
    }
}
