//! Monogon's OS image format: the config that names the payloads of an OS
//! image and carries the hashes of their chunks.
//!
//! A Monogon OS image is an OCI image manifest with artifact type
//! [`ARTIFACT_TYPE`] whose config (media type [`CONFIG_MEDIA_TYPE`]) is a
//! JSON [`Config`]. Payload `i` of the config describes layer `i` of the
//! manifest. oci-spec has no type for this config, so it is parsed with serde
//! and validated by [`Config::parse`].

pub mod preset;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use thiserror::Error;

/// The artifact type of a Monogon OS image manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.monogon.os.image.v1";
/// The media type of a Monogon OS image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.monogon.os.image.config.v1+json";
/// The media type of a payload stored as is.
pub const MEDIA_TYPE_UNCOMPRESSED: &str = "application/octet-stream";
/// The media type of a payload stored as one zstd frame.
pub const MEDIA_TYPE_ZSTD: &str = "application/zstd";
/// The only `format_version` this reader understands.
pub const FORMAT_VERSION: &str = "1";
/// The largest `hash_chunk_size` a reader accepts (Monogon writes 1 MiB).
pub const MAX_HASH_CHUNK_SIZE: u64 = 16 << 20;
/// The longest payload name.
pub const MAX_NAME_LEN: usize = 80;

/// A Monogon OS image config that does not follow the format.
///
/// Every variant names the config file and the field at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config is not JSON of the expected shape.
    #[error("{file}: bad Monogon OS image config JSON")]
    Json {
        /// The config blob, by digest.
        file: String,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// `format_version` is not [`FORMAT_VERSION`].
    #[error("{file}: format_version is {found:?}; this reader only understands \"1\"")]
    FormatVersion {
        /// The config blob, by digest.
        file: String,
        /// The version found.
        found: String,
    },
    /// `format_version` is not there at all.
    #[error("{file}: format_version is missing; this reader only understands \"1\"")]
    MissingFormatVersion {
        /// The config blob, by digest.
        file: String,
    },
    /// A payload name breaks the naming rules.
    #[error("{file}: payloads[{index}].name {name:?} is invalid: {why}")]
    BadName {
        /// The config blob, by digest.
        file: String,
        /// The payload's 0-based index in `payloads`.
        index: usize,
        /// The payload's name.
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Two payloads have the same name.
    #[error("{file}: payloads[{index}].name {name:?} is used twice")]
    DuplicateName {
        /// The config blob, by digest.
        file: String,
        /// The payload's 0-based index in `payloads`.
        index: usize,
        /// The payload's name.
        name: String,
    },
    /// `hash_chunk_size` is zero or too large.
    #[error(
        "{file}: payloads[{index}] ({name:?}).hash_chunk_size is {size}; must be 1..={MAX_HASH_CHUNK_SIZE}"
    )]
    ChunkSize {
        /// The config blob, by digest.
        file: String,
        /// The payload's 0-based index in `payloads`.
        index: usize,
        /// The payload's name.
        name: String,
        /// The hash chunk size given.
        size: u64,
    },
    /// The number of chunk hashes does not match the size and chunk size.
    #[error(
        "{file}: payloads[{index}] ({name:?}) has {found} chunk hashes; size {size} in chunks of {chunk_size} needs {expected}"
    )]
    ChunkCount {
        /// The config blob, by digest.
        file: String,
        /// The payload's 0-based index in `payloads`.
        index: usize,
        /// The payload's name.
        name: String,
        /// The payload's size in bytes.
        size: u64,
        /// Its hash chunk size.
        chunk_size: u64,
        /// Hashes the config lists.
        found: usize,
        /// Hashes the size and chunk size need.
        expected: u64,
    },
    /// A chunk hash is not unpadded standard base64 of 32 bytes.
    #[error(
        "{file}: payloads[{index}] ({name:?}).chunk_hashes_sha256[{chunk}] is not unpadded base64 of a SHA-256 hash: {value:?}"
    )]
    ChunkHash {
        /// The config blob, by digest.
        file: String,
        /// The payload's 0-based index in `payloads`.
        index: usize,
        /// The payload's name.
        name: String,
        /// The hash's 0-based index.
        chunk: usize,
        /// The text found.
        value: String,
    },
}

/// The parsed config of a Monogon OS image.
#[derive(Clone, Debug)]
pub struct Config {
    /// Always [`FORMAT_VERSION`] once parsed.
    pub format_version: String,
    /// What the image contains.
    pub product_info: ProductInfo,
    /// One entry per manifest layer, in the same order.
    pub payloads: Vec<Payload>,
}

/// Information about the product in an image.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProductInfo {
    /// Product id, e.g. `metropolis-node`.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Product version.
    pub version: String,
    /// Build variant; its first `-`-separated part is the architecture.
    pub variant: String,
    /// Hex commit hash the image was built from.
    pub commit_hash: String,
    /// Date of that commit.
    pub commit_date: String,
    /// Whether the build tree differed from the commit.
    pub build_tree_dirty: bool,
    /// Versions of the main components.
    pub components: Vec<Component>,
}

/// The version of one component of a product.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Component {
    /// Component id, e.g. `linux`.
    pub id: String,
    /// Its version.
    pub version: String,
}

impl ProductInfo {
    /// The CPU architecture: the first `-`-separated part of the variant.
    pub fn architecture(&self) -> &str {
        self.variant.split('-').next().unwrap_or_default()
    }

    /// The name of the removable-media EFI boot file for the architecture
    /// (`BOOTx64.EFI`, `BOOTAA64.EFI`), if it is a known one.
    pub fn efi_boot_file(&self) -> Option<&'static str> {
        match self.architecture() {
            "x86_64" => Some("BOOTx64.EFI"),
            "aarch64" => Some("BOOTAA64.EFI"),
            _ => None,
        }
    }
}

/// One payload of a Monogon OS image, with its chunk hashes decoded.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Its name, e.g. `system` or `kernel.efi`.
    pub name: String,
    /// Its uncompressed size in bytes.
    pub size: u64,
    /// The size of each hashed chunk (the last one may be shorter).
    pub hash_chunk_size: u64,
    /// SHA-256 of each chunk of the uncompressed payload.
    pub chunk_hashes: Vec<[u8; 32]>,
}

/// The config as written; [`Config::parse`] validates it.
#[derive(Deserialize)]
struct RawConfig {
    format_version: String,
    #[serde(default)]
    product_info: ProductInfo,
    #[serde(default)]
    payloads: Vec<RawPayload>,
}

#[derive(Deserialize)]
struct RawPayload {
    name: String,
    size: u64,
    hash_chunk_size: u64,
    // `null` for an empty payload.
    chunk_hashes_sha256: Option<Vec<String>>,
}

impl Config {
    /// Parses and validates a config; `file` names it in errors.
    pub fn parse(json: &[u8], file: &str) -> Result<Config, ConfigError> {
        let file = file.to_owned();
        // The version is checked before the rest so that a future format with
        // another shape still gets the clear "unknown version" error.
        #[derive(Deserialize)]
        struct Version {
            format_version: Option<serde_json::Value>,
        }
        let version: Version =
            serde_json::from_slice(json).map_err(|source| ConfigError::Json {
                file: file.clone(),
                source,
            })?;
        match version.format_version {
            Some(serde_json::Value::String(v)) if v == FORMAT_VERSION => {}
            Some(other) => {
                let found = match other {
                    serde_json::Value::String(s) => s,
                    v => v.to_string(),
                };
                return Err(ConfigError::FormatVersion { file, found });
            }
            None => return Err(ConfigError::MissingFormatVersion { file }),
        }
        let raw: RawConfig = serde_json::from_slice(json).map_err(|source| ConfigError::Json {
            file: file.clone(),
            source,
        })?;
        let mut names = HashSet::new();
        let mut payloads = Vec::with_capacity(raw.payloads.len());
        for (index, p) in raw.payloads.into_iter().enumerate() {
            if let Err(why) = check_name(&p.name) {
                return Err(ConfigError::BadName {
                    file,
                    index,
                    name: p.name,
                    why,
                });
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::DuplicateName {
                    file,
                    index,
                    name: p.name,
                });
            }
            if p.hash_chunk_size == 0 || p.hash_chunk_size > MAX_HASH_CHUNK_SIZE {
                return Err(ConfigError::ChunkSize {
                    file,
                    index,
                    name: p.name,
                    size: p.hash_chunk_size,
                });
            }
            let expected = p.size.div_ceil(p.hash_chunk_size);
            let hashes = p.chunk_hashes_sha256.unwrap_or_default();
            if hashes.len() as u64 != expected {
                return Err(ConfigError::ChunkCount {
                    file,
                    index,
                    name: p.name,
                    size: p.size,
                    chunk_size: p.hash_chunk_size,
                    found: hashes.len(),
                    expected,
                });
            }
            let mut chunk_hashes = Vec::with_capacity(hashes.len());
            for (chunk, value) in hashes.into_iter().enumerate() {
                match decode_hash(&value) {
                    Some(h) => chunk_hashes.push(h),
                    None => {
                        return Err(ConfigError::ChunkHash {
                            file,
                            index,
                            name: p.name,
                            chunk,
                            value,
                        })
                    }
                }
            }
            payloads.push(Payload {
                name: p.name,
                size: p.size,
                hash_chunk_size: p.hash_chunk_size,
                chunk_hashes,
            });
        }
        Ok(Config {
            format_version: raw.format_version,
            product_info: raw.product_info,
            payloads,
        })
    }

    /// The payload called `name` and its index (= its layer's index).
    pub fn payload(&self, name: &str) -> Option<(usize, &Payload)> {
        self.payloads
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }
}

/// Checks a payload name: 1 to 80 of `[0-9A-Za-z._-]`, not starting with `.`
/// or `_`, not ending with `.`. Returns why it is invalid.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 80 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only 0-9 A-Z a-z . _ - are allowed");
    }
    if name.starts_with(['.', '_']) {
        return Err("starts with '.' or '_'");
    }
    if name.ends_with('.') {
        return Err("ends with '.'");
    }
    Ok(())
}

fn decode_hash(value: &str) -> Option<[u8; 32]> {
    // STANDARD_NO_PAD rejects padding and non-canonical trailing bits.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value)
        .ok()?;
    bytes.try_into().ok()
}

/// A chunk of a payload whose SHA-256 is not the one in the config.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "payload {payload:?}: chunk {chunk} (bytes {offset}..{end}) does not match chunk_hashes_sha256[{chunk}]"
)]
pub struct BadChunk {
    /// The payload's name.
    pub payload: String,
    /// The chunk's index.
    pub chunk: usize,
    /// Offset of its first byte in the uncompressed payload.
    pub offset: u64,
    /// Offset one past its last byte.
    pub end: u64,
}

/// Checks a payload's chunk hashes as its bytes stream by, in any pieces.
///
/// The caller must not feed more than [`Payload::size`] bytes; extra bytes
/// are reported as a bad chunk past the end.
pub struct ChunkVerifier<'a> {
    payload: &'a Payload,
    hasher: Sha256,
    chunk: usize,
    /// Bytes of the current chunk hashed so far.
    in_chunk: u64,
}

impl<'a> ChunkVerifier<'a> {
    /// A verifier for the payload from its first byte.
    pub fn new(payload: &'a Payload) -> ChunkVerifier<'a> {
        ChunkVerifier {
            payload,
            hasher: Sha256::new(),
            chunk: 0,
            in_chunk: 0,
        }
    }

    fn chunk_len(&self, chunk: usize) -> u64 {
        let start = chunk as u64 * self.payload.hash_chunk_size;
        self.payload
            .size
            .saturating_sub(start)
            .min(self.payload.hash_chunk_size)
    }

    fn bad(&self, chunk: usize) -> BadChunk {
        let offset = chunk as u64 * self.payload.hash_chunk_size;
        BadChunk {
            payload: self.payload.name.clone(),
            chunk,
            offset,
            end: offset + self.chunk_len(chunk).max(1),
        }
    }

    /// Hashes the next bytes of the payload; fails at the first chunk they
    /// complete that does not match.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), BadChunk> {
        while !data.is_empty() {
            let Some(expected) = self.payload.chunk_hashes.get(self.chunk) else {
                return Err(self.bad(self.chunk));
            };
            let want = self.chunk_len(self.chunk) - self.in_chunk;
            let take = (want.min(data.len() as u64)) as usize;
            self.hasher.update(&data[..take]);
            self.in_chunk += take as u64;
            data = &data[take..];
            if self.in_chunk == self.chunk_len(self.chunk) {
                let got: [u8; 32] = self.hasher.finalize_reset().into();
                if &got != expected {
                    return Err(self.bad(self.chunk));
                }
                self.chunk += 1;
                self.in_chunk = 0;
            }
        }
        Ok(())
    }

    /// Checks that every chunk was seen; a payload cut short fails at the
    /// first chunk it did not complete.
    pub fn finish(self) -> Result<(), BadChunk> {
        if self.chunk == self.payload.chunk_hashes.len() {
            Ok(())
        } else {
            Err(self.bad(self.chunk))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD_NO_PAD;

    fn hashes(data: &[u8], chunk: usize) -> Vec<String> {
        data.chunks(chunk)
            .map(|c| STANDARD_NO_PAD.encode(Sha256::digest(c)))
            .collect()
    }

    fn config(payloads: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "format_version": "1",
            "product_info": {"id": "metropolis-node", "variant": "x86_64-debug"},
            "payloads": payloads,
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes(), "cfg")
    }

    #[test]
    fn parses_a_valid_config() {
        let data = vec![7u8; 10];
        let c = parse(&config(serde_json::json!([
            {"name": "kernel.efi", "size": 10, "hash_chunk_size": 4, "chunk_hashes_sha256": hashes(&data, 4)},
            {"name": "empty", "size": 0, "hash_chunk_size": 1048576, "chunk_hashes_sha256": null},
        ])))
        .unwrap();
        assert_eq!(c.payloads.len(), 2);
        assert_eq!(c.payloads[0].chunk_hashes.len(), 3);
        assert_eq!(c.product_info.architecture(), "x86_64");
        assert_eq!(c.product_info.efi_boot_file(), Some("BOOTx64.EFI"));
        assert_eq!(c.payload("empty").map(|(i, _)| i), Some(1));
        assert!(c.payload("system").is_none());
    }

    #[test]
    fn rejects_other_format_versions() {
        for v in [serde_json::json!("2"), serde_json::json!(1)] {
            let mut c = config(serde_json::json!([]));
            c["format_version"] = v;
            let e = parse(&c).unwrap_err();
            assert!(matches!(e, ConfigError::FormatVersion { .. }), "{e}");
        }
        let e = Config::parse(br#"{"payloads": 3}"#, "cfg").unwrap_err();
        assert!(matches!(e, ConfigError::MissingFormatVersion { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "cfg: format_version is missing; this reader only understands \"1\""
        );
    }

    #[test]
    fn names() {
        for ok in ["system", "kernel.efi", "a", "A-b_c.d", &"x".repeat(80)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".x", "_x", "x.", "a/b", "a b", "é", &"x".repeat(81)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_payloads() {
        let p = |name: &str, size: u64, cs: u64, h: serde_json::Value| serde_json::json!({"name": name, "size": size, "hash_chunk_size": cs, "chunk_hashes_sha256": h});
        let h1 = serde_json::json!(hashes(b"abcd", 4));
        let cases = [
            (serde_json::json!([p("_x", 4, 4, h1.clone())]), "invalid"),
            (
                serde_json::json!([p("a", 4, 4, h1.clone()), p("a", 4, 4, h1.clone())]),
                "used twice",
            ),
            (
                serde_json::json!([p("a", 4, 0, h1.clone())]),
                "hash_chunk_size",
            ),
            (
                serde_json::json!([p("a", 4, (16 << 20) + 1, h1.clone())]),
                "hash_chunk_size",
            ),
            (serde_json::json!([p("a", 5, 4, h1.clone())]), "needs 2"),
            (serde_json::json!([p("a", 0, 4, h1.clone())]), "needs 0"),
            (
                serde_json::json!([p("a", 4, 4, serde_json::json!(["AAAA"]))]),
                "base64",
            ),
            (
                serde_json::json!([p(
                    "a",
                    4,
                    4,
                    serde_json::json!([format!("{}=", h1[0].as_str().unwrap())])
                )]),
                "base64",
            ),
            (serde_json::json!([{"name": "a"}]), "JSON"),
            (
                serde_json::json!([p("a", 4, 4, h1.clone())])
                    .to_string()
                    .into(),
                "JSON",
            ),
        ];
        for (payloads, want) in cases {
            let e = parse(&config(payloads.clone())).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.starts_with("cfg: "),
                "{payloads}: {e}"
            );
        }
    }

    #[test]
    fn verifier_finds_the_first_bad_chunk() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut c = parse(&config(serde_json::json!([
            {"name": "system", "size": 1000, "hash_chunk_size": 300, "chunk_hashes_sha256": hashes(&data, 300)}
        ])))
        .unwrap();
        let p = c.payloads.remove(0);
        // Any split of the stream verifies.
        for piece in [1, 7, 299, 300, 301, 1000] {
            let mut v = ChunkVerifier::new(&p);
            for d in data.chunks(piece) {
                v.update(d).unwrap();
            }
            v.finish().unwrap();
        }
        let mut bad = data.clone();
        bad[650] ^= 1;
        let mut v = ChunkVerifier::new(&p);
        let e = v.update(&bad).unwrap_err();
        assert_eq!((e.chunk, e.offset, e.end), (2, 600, 900));
        assert!(e.to_string().contains("\"system\""));
        // Short and long streams.
        let mut v = ChunkVerifier::new(&p);
        v.update(&data[..950]).unwrap();
        assert_eq!(v.finish().unwrap_err().offset, 900);
        let mut v = ChunkVerifier::new(&p);
        let mut long = data.clone();
        long.push(0);
        assert_eq!(v.update(&long).unwrap_err().chunk, 4);
    }

    proptest::proptest! {
        /// Any split of a payload verifies; any single flipped byte is
        /// reported in the chunk that holds it.
        #[test]
        fn verifier_agrees_with_a_direct_check(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            chunk in 1u64..700,
            split in 1usize..500,
            flip in proptest::option::of(proptest::num::usize::ANY),
        ) {
            let p = Payload {
                name: "p".into(),
                size: data.len() as u64,
                hash_chunk_size: chunk,
                chunk_hashes: data.chunks(chunk as usize).map(|c| Sha256::digest(c).into()).collect(),
            };
            let mut bytes = data.clone();
            let flipped = flip.filter(|_| !bytes.is_empty()).map(|f| f % bytes.len());
            if let Some(f) = flipped {
                bytes[f] ^= 0x80;
            }
            let mut v = ChunkVerifier::new(&p);
            let r = bytes.chunks(split).try_for_each(|b| v.update(b)).and_then(|()| v.finish());
            match flipped {
                None => proptest::prop_assert!(r.is_ok()),
                Some(f) => {
                    let e = r.unwrap_err();
                    proptest::prop_assert_eq!(e.offset, f as u64 / chunk * chunk);
                    proptest::prop_assert!((f as u64) < e.end);
                }
            }
        }
    }
}
