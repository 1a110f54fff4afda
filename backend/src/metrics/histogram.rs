//! A log-linear latency histogram (the HDR histogram's bucket scheme) whose
//! buckets are atomics, so that the I/O path records without a lock.
//!
//! Values are nanoseconds. Below 256 ns every value has its own bucket; from
//! there on each power of two `[2^e, 2^(e+1))` is cut into 128 equal
//! sub-buckets, so a bucket is at most 1/128 (0.78 %) of the values in it
//! wide: better than two significant digits everywhere from 1 ns up to
//! [`MAX_TRACKABLE_NS`] (68.7 s). Larger values land in the last bucket; the
//! exact maximum is kept apart.

use super::counter::Counter;
use serde::{Deserialize, Serialize};

/// log2 of the number of sub-buckets each power of two is cut into.
pub const SUB_BUCKET_BITS: u32 = 7;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values below this have one bucket each.
const LINEAR_LIMIT: u64 = 2 * SUB_BUCKETS;
/// log2 of the first value past the tracked range.
const TOP_BIT: u32 = 36;
/// The largest value with a bucket of its own: 2^36 − 1 ns, about 68.7 s.
pub const MAX_TRACKABLE_NS: u64 = (1 << TOP_BIT) - 1;
// The range must cover at least a minute of latency.
const _: () = assert!(MAX_TRACKABLE_NS >= 60_000_000_000);
/// Number of buckets: the linear part plus 128 per power of two above it.
pub const BUCKETS: usize =
    (LINEAR_LIMIT + (TOP_BIT - SUB_BUCKET_BITS - 1) as u64 * SUB_BUCKETS) as usize;

/// The bucket a value (in ns) is counted in.
#[inline]
pub fn bucket_index(value: u64) -> usize {
    let v = value.min(MAX_TRACKABLE_NS);
    if v < LINEAR_LIMIT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BUCKET_BITS + 1
    let shift = exp - SUB_BUCKET_BITS;
    let sub = (v >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    (LINEAR_LIMIT + (shift - 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// The smallest and largest value (in ns) counted in bucket `index`.
pub fn bucket_range(index: usize) -> (u64, u64) {
    let i = index as u64;
    if i < LINEAR_LIMIT {
        return (i, i);
    }
    let shift = (i - LINEAR_LIMIT) / SUB_BUCKETS + 1;
    let sub = (i - LINEAR_LIMIT) % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << shift;
    (low, low + (1 << shift) - 1)
}

/// A histogram one thread records into while others read it.
///
/// Recording is three relaxed atomic stores (bucket, sum and, rarely, max)
/// with one writer at a time (see [`Counter`]); readers take a
/// [`HistogramSnapshot`] whenever they like. A snapshot taken during a
/// record may show the bucket without the sum or the other way round; the
/// count is derived from the buckets, so percentiles are always consistent.
pub struct AtomicHistogram {
    buckets: Box<[Counter]>,
    sum: Counter,
    max: Counter,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        AtomicHistogram {
            buckets: (0..BUCKETS).map(|_| Counter::default()).collect(),
            sum: Counter::default(),
            max: Counter::default(),
        }
    }

    /// Counts one value (in ns). One writer thread at a time.
    #[inline]
    pub fn record(&self, value: u64) {
        self.buckets[bucket_index(value)].add(1);
        self.sum.add(value);
        self.max.raise(value);
    }

    /// The counts so far, with only the non-empty buckets kept.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(u32, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let n = b.get();
                (n > 0).then_some((i as u32, n))
            })
            .collect();
        HistogramSnapshot {
            count: buckets.iter().map(|&(_, n)| n).sum(),
            sum_ns: self.sum.get(),
            max_ns: self.max.get(),
            buckets,
        }
    }
}

/// Counts of a histogram at one moment: sparse `(bucket index, count)` pairs
/// in increasing bucket order, plus the total count, sum and maximum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Values counted.
    pub count: u64,
    /// Sum of the values, in ns.
    pub sum_ns: u64,
    /// Largest value seen, in ns (exact, not a bucket bound).
    pub max_ns: u64,
    /// Non-empty buckets as `(index, count)`, indices increasing.
    pub buckets: Vec<(u32, u64)>,
}

impl HistogramSnapshot {
    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        self.count += other.count;
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        let mut merged = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (
            self.buckets.iter().peekable(),
            other.buckets.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, na)), Some(&&(ib, nb))) => {
                    if ia == ib {
                        merged.push((ia, na + nb));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, na));
                        a.next();
                    } else {
                        merged.push((ib, nb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
    }

    /// What was counted after `earlier` (a snapshot of the same histogram)
    /// was taken. The maximum of the interval is not known exactly: it is
    /// the top of the highest bucket that grew, capped by the overall
    /// maximum. Counts that went backwards (the histogram was recreated)
    /// are taken as zero.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut old = earlier.buckets.iter().peekable();
        let mut buckets = Vec::new();
        for &(i, n) in &self.buckets {
            while old.peek().is_some_and(|&&(j, _)| j < i) {
                old.next();
            }
            let before = match old.peek() {
                Some(&&(j, m)) if j == i => m,
                _ => 0,
            };
            if n > before {
                buckets.push((i, n - before));
            }
        }
        let max_ns = buckets
            .last()
            .map_or(0, |&(i, _)| bucket_range(i as usize).1.min(self.max_ns));
        HistogramSnapshot {
            count: self.count.saturating_sub(earlier.count),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            max_ns,
            buckets,
        }
    }

    /// The value (in ns) at quantile `q` (0.0..=1.0): the top of the bucket
    /// holding the ⌈q·n⌉-th smallest value, capped by the maximum. So it is
    /// never below the exact quantile and at most one bucket width (0.78 %)
    /// above it. 0 when nothing was counted.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().map(|&(_, n)| n).sum();
        if total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let top = bucket_range(i as usize).1;
                return if self.max_ns > 0 {
                    top.min(self.max_ns)
                } else {
                    top
                };
            }
        }
        self.max_ns
    }

    /// Mean of the values in ns (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// How many values are at most `bound` ns, counting a bucket only when
    /// all of it is at most `bound` (so a bucket straddling the bound is
    /// counted with the next, larger bound).
    pub fn count_at_most(&self, bound: u64) -> u64 {
        self.buckets
            .iter()
            .take_while(|&&(i, _)| bucket_range(i as usize).1 <= bound)
            .map(|&(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert_eq!(
                lo,
                next,
                "bucket {i} starts where {} ended",
                i.wrapping_sub(1)
            );
            assert!(hi >= lo);
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(hi), i);
            // Two significant digits: a bucket is at most 1/128 of its values wide.
            assert!(
                (hi - lo) * 128 <= lo.max(1),
                "bucket {i} [{lo},{hi}] too wide"
            );
            next = hi + 1;
        }
        assert_eq!(next, MAX_TRACKABLE_NS + 1);
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = AtomicHistogram::new().snapshot();
        assert_eq!(h.quantile(0.5), 0);
        assert_eq!(h.quantile(1.0), 0);
        assert_eq!(h.mean(), 0.0);
        assert!(h.buckets.is_empty());
    }

    #[test]
    fn values_past_the_range_keep_their_exact_max() {
        let h = AtomicHistogram::new();
        h.record(100 * 1_000_000_000);
        h.record(1_000);
        let s = h.snapshot();
        assert_eq!(s.max_ns, 100 * 1_000_000_000);
        assert_eq!(s.count, 2);
        assert_eq!(s.quantile(0.5), bucket_range(bucket_index(1_000)).1);
        assert_eq!(s.quantile(1.0), MAX_TRACKABLE_NS);
    }

    #[test]
    fn since_subtracts_and_bounds_the_interval_max() {
        let h = AtomicHistogram::new();
        for v in [1_000, 2_000, 5_000_000] {
            h.record(v);
        }
        let a = h.snapshot();
        for v in [3_000, 3_000, 4_000] {
            h.record(v);
        }
        let d = h.snapshot().since(&a);
        assert_eq!(d.count, 3);
        assert_eq!(d.sum_ns, 10_000);
        assert!(
            d.max_ns >= 4_000 && d.max_ns <= 4_000 + 4_000 / 128,
            "{}",
            d.max_ns
        );
        assert_eq!(d.quantile(0.5), bucket_range(bucket_index(3_000)).1);
        // A histogram that went backwards (recreated) yields no negative counts.
        let back = a.since(&h.snapshot());
        assert_eq!(back.count, 0);
        assert!(back.buckets.is_empty());
    }

    /// The exact quantile of sorted values, with the same rank rule.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    proptest! {
        #[test]
        fn quantiles_match_a_sorted_reference(
            mut values in prop::collection::vec(
                prop_oneof![0u64..2_000, 0u64..10_000_000, 0u64..MAX_TRACKABLE_NS], 1..400),
            split in 0usize..400,
        ) {
            // Record in two histograms and merge, to cover merge as well.
            let (h1, h2) = (AtomicHistogram::new(), AtomicHistogram::new());
            for (i, &v) in values.iter().enumerate() {
                if i < split { h1.record(v) } else { h2.record(v) }
            }
            let mut s = h1.snapshot();
            s.merge(&h2.snapshot());
            values.sort_unstable();
            prop_assert_eq!(s.count, values.len() as u64);
            prop_assert_eq!(s.sum_ns, values.iter().sum::<u64>());
            prop_assert_eq!(s.max_ns, *values.last().unwrap());
            for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let want = exact(&values, q);
                let got = s.quantile(q);
                prop_assert!(got >= want, "q{} got {} < exact {}", q, got, want);
                prop_assert!(got - want <= want / 128, "q{} got {} exact {}", q, got, want);
            }
            prop_assert_eq!(s.quantile(1.0), *values.last().unwrap());
            // Buckets stay sorted and their counts add up.
            prop_assert!(s.buckets.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), s.count);
        }

        #[test]
        fn count_at_most_is_monotone_and_exact_on_bucket_tops(
            values in prop::collection::vec(0u64..100_000_000, 0..200),
            bound in 0u64..100_000_000,
        ) {
            let h = AtomicHistogram::new();
            for &v in &values { h.record(v) }
            let s = h.snapshot();
            let top = bucket_range(bucket_index(bound)).1;
            let want = values.iter().filter(|&&v| v <= top).count() as u64;
            prop_assert_eq!(s.count_at_most(top), want);
            prop_assert!(s.count_at_most(bound) <= s.count_at_most(top));
        }
    }
}
