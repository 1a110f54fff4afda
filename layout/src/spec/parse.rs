//! The values a layout file writes as strings: sizes, partition types and
//! contents.

use crate::oci::LayerRef;
use crate::spec::error::{Problem, SizeError};
use crate::spec::{ContentSpec, TYPE_ALIASES};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// Parses a size: a number of bytes, optionally with a binary unit
/// (`512MiB`, `5GiB`, `4 G`, `1048576`, `1.5GiB` is not accepted).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    if number.is_empty() {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => return Err(SizeError::DecimalUnit(text.to_owned())),
        _ => return Err(SizeError::Syntax(text.to_owned())),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// Parses a partition type: a GUID or an alias from [`TYPE_ALIASES`].
pub fn parse_type(text: &str) -> Result<Uuid, Problem> {
    let t = text.trim();
    if let Some((_, guid)) = TYPE_ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(t))
    {
        return Ok(*guid);
    }
    match Uuid::try_parse(t) {
        Ok(guid) if guid.is_nil() => Err(Problem::NilType),
        Ok(guid) => Ok(guid),
        Err(_) => Err(Problem::UnknownType(text.to_owned())),
    }
}

/// Parses a content string; `base` is the directory `file:` paths are
/// relative to.
pub fn parse_content(text: &str, base: &Path) -> Result<ContentSpec, Problem> {
    let bad = |why: &str| Problem::BadContent(format!("{text:?}: {why}"));
    let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
    match kind {
        "empty" if arg.is_empty() && !text.contains(':') => Ok(ContentSpec::Empty),
        "payload" if !arg.is_empty() => Ok(ContentSpec::Payload(arg.to_owned())),
        "layer" => {
            if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
                let index = arg
                    .parse()
                    .map_err(|_| bad("the layer index is too large"))?;
                Ok(ContentSpec::Layer(LayerRef::Index(index)))
            } else if is_digest(arg) {
                Ok(ContentSpec::Layer(LayerRef::Digest(arg.to_owned())))
            } else {
                Err(bad("give layer:INDEX or layer:sha256:<64 hex digits>"))
            }
        }
        "file" if !arg.is_empty() => Ok(ContentSpec::File(base.join(arg))),
        "payload" | "file" => Err(bad("missing the name after the colon")),
        "inline" if text.contains(':') => Ok(ContentSpec::Inline(Arc::from(arg.as_bytes()))),
        "base64" if text.contains(':') => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(arg.trim())
                .map_err(|e| bad(&format!("not valid base64: {e}")))?;
            Ok(ContentSpec::Inline(data.into()))
        }
        _ => Err(bad(
            "give empty, payload:NAME, layer:INDEX, layer:sha256:…, file:PATH, inline:TEXT or base64:DATA",
        )),
    }
}

/// Whether `s` is a digest we can look layers up by.
pub(crate) fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}
