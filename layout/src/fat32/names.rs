//! File names: long-name validation, case folding, 8.3 short names and the
//! volume label.
//!
//! Every entry is written with long-name (VFAT) entries, so the short name is
//! only a unique key that old readers and the LFN checksum need. A name that
//! already is a valid 8.3 name once upper-cased keeps it; any other name gets
//! a basis name with a `~N` tail, the scheme of Microsoft's FAT specification,
//! restricted to ASCII so the result does not depend on an OEM code page.

use std::collections::{HashMap, HashSet};

/// The longest long name, in UTF-16 code units.
pub const MAX_NAME_UNITS: usize = 255;

/// An 11-byte short name: 8 bytes of base, 3 of extension, space padded.
pub type ShortName = [u8; 11];

/// Why a long name cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// Longer than 255 UTF-16 code units.
    TooLong(usize),
    /// Holds a control character or one of `"*/:<>?\|`.
    BadChar(char),
    /// `.` or `..`, which every directory already has.
    Dots,
    /// Starts with a space or ends with a space or a dot, which readers strip.
    Padding,
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameProblem::TooLong(n) => write!(
                f,
                "is {n} UTF-16 code units long, more than the {MAX_NAME_UNITS} FAT allows"
            ),
            NameProblem::BadChar(c) => write!(
                f,
                "contains {c:?}, which FAT names cannot hold (no control characters or any of \"*/:<>?\\|)"
            ),
            NameProblem::Dots => write!(f, "is a reserved directory name"),
            NameProblem::Padding => write!(
                f,
                "starts with a space or ends with a space or a dot, which readers strip"
            ),
        }
    }
}

/// Checks that `name` (non-empty) can be a FAT long name as written.
pub fn check_long_name(name: &str) -> Result<(), NameProblem> {
    if name == "." || name == ".." {
        return Err(NameProblem::Dots);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| (c as u32) < 0x20 || c == '\u{7f}' || "\"*/:<>?\\|".contains(c))
    {
        return Err(NameProblem::BadChar(c));
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.ends_with('.') {
        return Err(NameProblem::Padding);
    }
    let units = name.encode_utf16().count();
    if units > MAX_NAME_UNITS {
        return Err(NameProblem::TooLong(units));
    }
    Ok(())
}

/// The key under which names collide: FAT looks names up without regard to
/// case. Full Unicode upper-casing folds a little more than Windows' table
/// does, which only ever rejects more pairs, never fewer.
pub fn fold(name: &str) -> String {
    name.chars().flat_map(char::to_uppercase).collect()
}

/// Whether an ASCII byte may appear in a short name (besides the dot that
/// separates base and extension).
fn short_char_ok(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b"!#$%&'()-@^_`{}~".contains(&b)
}

/// The short name of `name` if upper-casing it yields a valid 8.3 name.
fn pass_through(name: &str) -> Option<ShortName> {
    let upper = name.to_ascii_uppercase();
    let (base, ext) = match upper.split_once('.') {
        Some((base, ext)) => (base, Some(ext)),
        None => (upper.as_str(), None),
    };
    let base_ok = (1..=8).contains(&base.len()) && base.bytes().all(short_char_ok);
    let ext_ok = ext.is_none_or(|e| (1..=3).contains(&e.len()) && e.bytes().all(short_char_ok));
    if !(base_ok && ext_ok) {
        return None;
    }
    let mut short = [b' '; 11];
    short[..base.len()].copy_from_slice(base.as_bytes());
    if let Some(ext) = ext {
        short[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    }
    Some(short)
}

/// The basis of a generated short name: upper-cased, leading dots and all
/// spaces dropped, characters a short name cannot hold replaced by `_`, the
/// part after the last dot as the extension. Base up to 8 bytes (never
/// empty), extension up to 3.
fn basis(name: &str) -> (Vec<u8>, Vec<u8>) {
    let stripped: String = name.trim_start_matches(['.', ' ']).replace(' ', "");
    let (base, ext) = match stripped.rsplit_once('.') {
        Some((base, ext)) => (base.replace('.', ""), ext.to_owned()),
        None => (stripped, String::new()),
    };
    let map = |s: &str, max: usize| -> Vec<u8> {
        s.chars()
            .map(|c| {
                let b = c.to_ascii_uppercase();
                if b.is_ascii() && short_char_ok(b as u8) {
                    b as u8
                } else {
                    b'_'
                }
            })
            .take(max)
            .collect()
    };
    let mut base = map(&base, 8);
    if base.is_empty() {
        base.push(b'_');
    }
    (base, map(&ext, 3))
}

/// Assigns unique short names to the entries of one directory.
///
/// Names that are valid 8.3 names once upper-cased are reserved first, so a
/// generated name never takes one away; the rest get `BASE~N.EXT` with the
/// smallest free `N`. `taken` holds names already in use (the volume label).
/// The caller has checked that no two names fold to the same key, so
/// pass-through names never collide with each other.
#[derive(Default)]
pub struct ShortNames {
    taken: HashSet<ShortName>,
    /// Next tail to try, per base prefix, extension and tail width. The
    /// families of candidates these keys produce are disjoint, so each
    /// counter only ever moves forward and the whole directory costs linear
    /// time even when thousands of names share a prefix.
    next_tail: HashMap<(Vec<u8>, Vec<u8>, u32), u32>,
}

impl ShortNames {
    /// Marks `short` as used (e.g. the volume label's entry).
    pub fn reserve(&mut self, short: ShortName) {
        self.taken.insert(short);
    }

    /// Short names for `names`, in order; `None` where no tail up to
    /// `~999999` is free (impossible within FAT's 65536 entries per directory).
    pub fn assign<'a>(
        &mut self,
        names: impl Iterator<Item = &'a str> + Clone,
    ) -> Vec<Option<ShortName>> {
        let direct: Vec<Option<ShortName>> = names.clone().map(pass_through).collect();
        for short in direct.iter().flatten() {
            self.taken.insert(*short);
        }
        names
            .zip(direct)
            .map(|(name, direct)| direct.or_else(|| self.generate(name)))
            .collect()
    }

    fn generate(&mut self, name: &str) -> Option<ShortName> {
        let (base, ext) = basis(name);
        for digits in 1..=6u32 {
            let keep = base.len().min(7 - digits as usize);
            let prefix = base[..keep].to_vec();
            let lo = 10u32.pow(digits - 1);
            let hi = 10u32.pow(digits);
            let next = self
                .next_tail
                .entry((prefix.clone(), ext.clone(), digits))
                .or_insert(lo);
            while *next < hi {
                let n = *next;
                *next += 1;
                let mut short = [b' '; 11];
                let tail = format!("~{n}");
                short[..keep].copy_from_slice(&prefix);
                short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
                short[8..8 + ext.len()].copy_from_slice(&ext);
                if self.taken.insert(short) {
                    return Some(short);
                }
            }
        }
        None
    }
}

/// The checksum of a short name that every long-name entry carries.
pub fn lfn_checksum(short: &ShortName) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Why a volume label cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelProblem {
    /// Longer than 11 bytes.
    TooLong(usize),
    /// A character other than `A-Z 0-9 ! # $ % & ' ( ) - @ ^ _ \` { } ~` or
    /// an inner space.
    BadChar(char),
    /// Starts or ends with a space.
    Padding,
}

impl std::fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelProblem::TooLong(n) => write!(f, "is {n} bytes long, more than 11"),
            LabelProblem::BadChar(c) => write!(
                f,
                "contains {c:?}; a label may hold A-Z, 0-9, inner spaces and !#$%&'()-@^_`{{}}~"
            ),
            LabelProblem::Padding => write!(f, "starts or ends with a space"),
        }
    }
}

/// The 11-byte label field for `label`, or `None` for the empty label
/// (written as `NO NAME` in the boot sector, with no root entry).
pub fn label_field(label: &str) -> Result<Option<ShortName>, LabelProblem> {
    if label.is_empty() {
        return Ok(None);
    }
    if let Some(c) = label
        .chars()
        .find(|&c| !(c == ' ' || (c.is_ascii() && short_char_ok(c as u8))))
    {
        return Err(LabelProblem::BadChar(c));
    }
    if label.len() > 11 {
        return Err(LabelProblem::TooLong(label.len()));
    }
    if label.starts_with(' ') || label.ends_with(' ') {
        return Err(LabelProblem::Padding);
    }
    let mut field = [b' '; 11];
    field[..label.len()].copy_from_slice(label.as_bytes());
    Ok(Some(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(short: &ShortName) -> String {
        String::from_utf8_lossy(short).into_owned()
    }

    #[test]
    fn valid_83_names_pass_through_upper_cased() {
        let mut names = ShortNames::default();
        let got = names.assign(["BOOTx64.EFI", "EFI", "boot-a.efi", "a.b"].into_iter());
        let got: Vec<String> = got.iter().map(|n| s(&n.unwrap())).collect();
        assert_eq!(
            got,
            ["BOOTX64 EFI", "EFI        ", "BOOT-A  EFI", "A       B  "]
        );
    }

    #[test]
    fn long_and_lossy_names_get_tails() {
        let mut names = ShortNames::default();
        let got = names.assign(
            [
                "metropolis",
                "parameters.pb",
                "a long name.txt",
                "a long nam2.txt",
                ".bashrc",
                "ünï.cöde",
                "x.tar.gz",
                "a+b",
            ]
            .into_iter(),
        );
        let got: Vec<String> = got.iter().map(|n| s(&n.unwrap())).collect();
        assert_eq!(
            got,
            [
                "METROP~1   ",
                "PARAME~1PB ",
                "ALONGN~1TXT",
                "ALONGN~2TXT",
                "BASHRC~1   ",
                "_N_~1   C_D",
                "XTAR~1  GZ ",
                "A_B~1      ",
            ]
        );
    }

    #[test]
    fn generated_names_skip_pass_through_ones() {
        // "LONGNA~1.TXT" is itself a valid 8.3 name: it keeps it, and the
        // long name that would have generated it moves on to ~2, even though
        // it comes first.
        let mut names = ShortNames::default();
        let got = names.assign(["longname1.txt", "LONGNA~1.TXT"].into_iter());
        assert_eq!(s(&got[0].unwrap()), "LONGNA~2TXT");
        assert_eq!(s(&got[1].unwrap()), "LONGNA~1TXT");
    }

    #[test]
    fn tails_widen_past_nine() {
        let mut names = ShortNames::default();
        let long: Vec<String> = (0..12).map(|i| format!("longname{i}")).collect();
        let got = names.assign(long.iter().map(String::as_str));
        assert_eq!(s(&got[8].unwrap()), "LONGNA~9   ");
        assert_eq!(s(&got[9].unwrap()), "LONGN~10   ");
        assert_eq!(s(&got[11].unwrap()), "LONGN~12   ");
    }

    #[test]
    fn checksum_matches_known_value() {
        // Computed by hand from the rotate-and-add definition.
        let mut sum = 0u8;
        for &b in b"BOOTX64 EFI" {
            sum = (((sum & 1) << 7) | (sum >> 1)).wrapping_add(b);
        }
        assert_eq!(lfn_checksum(b"BOOTX64 EFI"), sum);
    }

    #[test]
    fn long_name_rules() {
        assert_eq!(check_long_name("ok name.txt"), Ok(()));
        assert_eq!(check_long_name("日本語"), Ok(()));
        assert_eq!(check_long_name(".hidden"), Ok(()));
        assert_eq!(check_long_name("."), Err(NameProblem::Dots));
        assert_eq!(check_long_name(".."), Err(NameProblem::Dots));
        assert_eq!(check_long_name("a:b"), Err(NameProblem::BadChar(':')));
        assert_eq!(check_long_name("a\nb"), Err(NameProblem::BadChar('\n')));
        assert_eq!(check_long_name("trail."), Err(NameProblem::Padding));
        assert_eq!(check_long_name("trail "), Err(NameProblem::Padding));
        assert_eq!(check_long_name(" lead"), Err(NameProblem::Padding));
        assert_eq!(check_long_name(&"x".repeat(255)), Ok(()));
        assert_eq!(
            check_long_name(&"x".repeat(256)),
            Err(NameProblem::TooLong(256))
        );
        // Outside the BMP a character takes two code units.
        assert_eq!(
            check_long_name(&"😀".repeat(128)),
            Err(NameProblem::TooLong(256))
        );
    }

    #[test]
    fn label_rules() {
        assert_eq!(label_field("MNGN_BOOT").unwrap().unwrap(), *b"MNGN_BOOT  ");
        assert_eq!(label_field("").unwrap(), None);
        assert_eq!(label_field("A B").unwrap().unwrap(), *b"A B        ");
        assert_eq!(label_field("ABCDEFGHIJKL"), Err(LabelProblem::TooLong(12)));
        assert_eq!(label_field("lower"), Err(LabelProblem::BadChar('l')));
        assert_eq!(label_field("É"), Err(LabelProblem::BadChar('É')));
        assert_eq!(label_field("A.B"), Err(LabelProblem::BadChar('.')));
        assert_eq!(label_field(" A"), Err(LabelProblem::Padding));
    }

    proptest! {
        /// Any set of distinct names gets distinct, well-formed short names.
        #[test]
        fn short_names_are_unique_and_valid(
            names in prop::collection::hash_set("[a-zA-Z0-9 .~_+é]{1,14}", 1..200)
        ) {
            let names: Vec<String> = names.into_iter().collect();
            let mut seen_fold = HashSet::new();
            let names: Vec<&String> = names.iter().filter(|n| seen_fold.insert(fold(n))).collect();
            let mut sn = ShortNames::default();
            let got = sn.assign(names.iter().map(|n| n.as_str()));
            let mut seen = HashSet::new();
            for short in got {
                let short = short.unwrap();
                prop_assert!(seen.insert(short));
                prop_assert!(short_char_ok(short[0]));
                let base_end = short[..8].iter().position(|&b| b == b' ').unwrap_or(8);
                prop_assert!(short[..base_end].iter().all(|&b| short_char_ok(b)));
                prop_assert!(short[base_end..8].iter().all(|&b| b == b' '));
                let ext_end = 8 + short[8..].iter().position(|&b| b == b' ').unwrap_or(3);
                prop_assert!(short[8..ext_end].iter().all(|&b| short_char_ok(b)));
                prop_assert!(short[ext_end..].iter().all(|&b| b == b' '));
            }
        }
    }
}
