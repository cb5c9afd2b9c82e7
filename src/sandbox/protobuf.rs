//! kubectl's protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the built-in
//! kinds, decoded to the JSON object the rest of the sandbox works on.
//!
//! Contract: [`decode`] reads the envelope kube-apiserver reads — the magic `k8s\0`, then a
//! `runtime.Unknown` whose `typeMeta` names the object's apiVersion and kind and whose `raw`
//! holds the object — and decodes the object by the field table of the Kubernetes protobuf
//! definitions (`protobuf-fields.json`, generated from the k8s-pb crate with each field's
//! JSON name from k8s-openapi by `scripts/protobuf-fields.py`; the wire primitives are
//! prost's). The special types read as their JSON forms: `Quantity` a string, `IntOrString`
//! a number or a string, `Time`/`MicroTime` RFC 3339, `Duration` Go's duration text,
//! `RawExtension`/`FieldsV1` the embedded JSON, bytes base64. A kind with no table (a custom
//! resource: kube-apiserver serves those as JSON only), a compressed body, a field the table
//! does not know or a malformed one is refused with what is wrong — never half-read.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The content type kubectl sends built-in objects in.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The envelope's magic prefix.
const MAGIC: &[u8] = b"k8s\0";

/// Deepest nesting of messages read (a PodSpec is about ten deep).
const MAX_DEPTH: usize = 64;

/// One field: (number, JSON name, type, referenced message or map value type, repeated).
type Field = (u32, String, String, Option<String>, u8);

#[derive(Deserialize)]
struct Table {
    /// `apiVersion/kind` → message.
    kinds: BTreeMap<String, String>,
    /// Message → its fields.
    messages: BTreeMap<String, Vec<Field>>,
}

static TABLE: LazyLock<Option<Table>> =
    LazyLock::new(|| serde_json::from_str(include_str!("protobuf-fields.json")).ok());

/// The message a built-in `apiVersion` and `kind` are encoded as.
fn message_of(table: &Table, api_version: &str, kind: &str) -> Option<String> {
    if let Some(m) = table.kinds.get(&format!("{api_version}/{kind}")) {
        return Some(m.clone());
    }
    // Kinds served only as a subresource (Scale) are not in the resource list: their message
    // is in the group's package (`autoscaling/v1` → `api.autoscaling.v1`).
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let package = group.split('.').next().unwrap_or(group);
    let name = format!("api.{package}.{version}.{kind}");
    table.messages.contains_key(&name).then_some(name)
}

/// The object in a protobuf request body, as JSON with `apiVersion` and `kind`.
///
/// # Errors
/// Not the protobuf envelope, compressed, a kind with no protobuf form, or a malformed or
/// unknown field — each named.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let table = TABLE.as_ref().ok_or("the sandbox's protobuf field table does not parse")?;
    let mut buf = body.strip_prefix(MAGIC).ok_or("not a Kubernetes protobuf body: it does not start with k8s\\0")?;
    let (mut api_version, mut kind, mut raw, mut encoding) = (String::new(), String::new(), Vec::new(), String::new());
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| format!("the envelope: {e}"))?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                let mut meta = length_delimited(&mut buf)?;
                while meta.has_remaining() {
                    let (tag, wire) = decode_key(&mut meta).map_err(|e| format!("the envelope's typeMeta: {e}"))?;
                    match (tag, wire) {
                        (1, WireType::LengthDelimited) => api_version = text(&mut meta)?,
                        (2, WireType::LengthDelimited) => kind = text(&mut meta)?,
                        _ => return Err(format!("the envelope's typeMeta has an unknown field {tag}")),
                    }
                }
            }
            (2, WireType::LengthDelimited) => raw = length_delimited(&mut buf)?.to_vec(),
            (3, WireType::LengthDelimited) => encoding = text(&mut buf)?,
            (4, WireType::LengthDelimited) => {
                text(&mut buf)?;
            }
            _ => return Err(format!("the envelope has an unknown field {tag}")),
        }
    }
    if !encoding.is_empty() {
        return Err(format!("a {encoding}-encoded body is not supported; send it uncompressed"));
    }
    let message = message_of(table, &api_version, &kind)
        .ok_or_else(|| format!("{api_version} {kind} has no protobuf form here (custom resources are JSON only)"))?;
    let mut object = decode_message(table, &message, &mut raw.as_slice(), 0)?;
    if let Some(o) = object.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = usize::try_from(decode_varint(buf).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if len > buf.len() {
        return Err(format!("a field of {len} bytes runs past the end of the body"));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn text(buf: &mut &[u8]) -> Result<String, String> {
    String::from_utf8(length_delimited(buf)?.to_vec()).map_err(|_| "a string field is not UTF-8".to_owned())
}

fn fixed64(buf: &mut &[u8]) -> Result<f64, String> {
    if buf.len() < 8 {
        return Err("a 64-bit field runs past the end of the body".into());
    }
    Ok(buf.get_f64_le())
}

/// One scalar of type `ty` with wire type `wire`.
fn scalar(ty: &str, wire: WireType, buf: &mut &[u8]) -> Result<Value, String> {
    match (ty, wire) {
        ("string", WireType::LengthDelimited) => Ok(json!(text(buf)?)),
        ("bytes", WireType::LengthDelimited) => {
            Ok(json!(base64::engine::general_purpose::STANDARD.encode(length_delimited(buf)?)))
        }
        // Two's complement, as protobuf encodes negative int32 and int64 values.
        ("int64", WireType::Varint) => Ok(json!(decode_varint(buf).map_err(|e| e.to_string())? as i64)),
        ("int32", WireType::Varint) => Ok(json!(decode_varint(buf).map_err(|e| e.to_string())? as i64 as i32)),
        ("bool", WireType::Varint) => Ok(json!(decode_varint(buf).map_err(|e| e.to_string())? != 0)),
        ("double", WireType::SixtyFourBit) => Ok(json!(fixed64(buf)?)),
        _ => Err(format!("a {ty} field arrived as wire type {wire:?}")),
    }
}

/// The message `name` from `buf`, as JSON.
fn decode_message(table: &Table, name: &str, buf: &mut &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("messages nest deeper than {MAX_DEPTH}"));
    }
    let fields = table.messages.get(name).ok_or_else(|| format!("no message {name} in the table"))?;
    let mut out = Map::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(buf).map_err(|e| format!("{name}: {e}"))?;
        let Some((_, json_name, ty, reference, repeated)) = fields.iter().find(|f| f.0 == tag) else {
            return Err(format!("{name} has no field {tag}: the body is from a newer Kubernetes; send JSON"));
        };
        let value = match ty.as_str() {
            "message" => {
                if wire != WireType::LengthDelimited {
                    return Err(format!("{name}.{json_name} arrived as wire type {wire:?}"));
                }
                let mut inner = length_delimited(buf)?;
                let reference = reference.as_deref().unwrap_or_default();
                special(table, reference, &mut inner, depth + 1)?
            }
            "map" => {
                if wire != WireType::LengthDelimited {
                    return Err(format!("{name}.{json_name} arrived as wire type {wire:?}"));
                }
                let mut entry = length_delimited(buf)?;
                let (mut key, mut value) = (String::new(), Value::Null);
                while entry.has_remaining() {
                    let (tag, wire) = decode_key(&mut entry).map_err(|e| format!("{name}.{json_name}: {e}"))?;
                    match tag {
                        1 => key = text(&mut entry)?,
                        2 => {
                            value = match reference.as_deref().unwrap_or_default() {
                                scalar_type @ ("string" | "bytes") => scalar(scalar_type, wire, &mut entry)?,
                                message => {
                                    let mut inner = length_delimited(&mut entry)?;
                                    special(table, message, &mut inner, depth + 1)?
                                }
                            };
                        }
                        _ => return Err(format!("{name}.{json_name}: a map entry has a field {tag}")),
                    }
                }
                let map = out.entry(json_name.clone()).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
                continue;
            }
            // A packed repeated scalar: several varints in one length-delimited field.
            "int32" | "int64" if *repeated == 1 && wire == WireType::LengthDelimited => {
                let mut packed = length_delimited(buf)?;
                let list = out.entry(json_name.clone()).or_insert_with(|| json!([]));
                while packed.has_remaining() {
                    let v = scalar(ty, WireType::Varint, &mut packed)?;
                    if let Some(a) = list.as_array_mut() {
                        a.push(v);
                    }
                }
                continue;
            }
            _ => scalar(ty, wire, buf).map_err(|e| format!("{name}.{json_name}: {e}"))?,
        };
        if *repeated == 1 {
            let list = out.entry(json_name.clone()).or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(value);
            }
        } else {
            out.insert(json_name.clone(), value);
        }
    }
    Ok(Value::Object(out))
}

/// The message `name`, read as its JSON form when Kubernetes gives it one of its own.
fn special(table: &Table, name: &str, buf: &mut &[u8], depth: usize) -> Result<Value, String> {
    let plain = |buf: &mut &[u8]| decode_message(table, name, buf, depth);
    Ok(match name {
        "apimachinery.pkg.api.resource.Quantity" => plain(buf)?.get("string").cloned().unwrap_or(json!("0")),
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let v = plain(buf)?;
            if v.get("type").and_then(Value::as_i64) == Some(1) {
                v.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                v.get("intVal").cloned().unwrap_or(json!(0))
            }
        }
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let v = plain(buf)?;
            let seconds = v.get("seconds").and_then(Value::as_i64).unwrap_or(0);
            let nanos = v.get("nanos").and_then(Value::as_i64).unwrap_or(0);
            let at =
                jiff::Timestamp::new(seconds, i32::try_from(nanos).unwrap_or(0)).map_err(|e| format!("{name}: {e}"))?;
            if name.ends_with("MicroTime") {
                json!(format!("{}", at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")))
            } else {
                json!(at.round(jiff::Unit::Second).unwrap_or(at).strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let nanos = plain(buf)?.get("duration").and_then(Value::as_i64).unwrap_or(0);
            json!(go_duration(nanos))
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = plain(buf)?;
            let bytes = raw
                .get("raw")
                .and_then(Value::as_str)
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
                .transpose()
                .map_err(|e| format!("{name}: {e}"))?
                .unwrap_or_default();
            if bytes.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&bytes).map_err(|e| format!("{name} does not hold JSON: {e}"))?
            }
        }
        _ => plain(buf)?,
    })
}

/// `nanos` as Go's `time.Duration.String()` writes it (`1h2m3s`, `1.5s`, `0s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (h, m) = (n / 3_600_000_000_000, (n / 60_000_000_000) % 60);
    let (s, frac) = ((n / 1_000_000_000) % 60, n % 1_000_000_000);
    let seconds =
        if frac == 0 { format!("{s}s") } else { format!("{s}.{}", format!("{frac:09}").trim_end_matches('0')) + "s" };
    match (h, m) {
        (0, 0) => format!("{sign}{seconds}"),
        (0, _) => format!("{sign}{m}m{seconds}"),
        _ => format!("{sign}{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600 * 1_000_000_000), "1h0m0s");
    }

    #[test]
    fn a_body_that_is_not_the_envelope_or_names_a_custom_resource_is_refused() {
        assert!(decode(b"{}").unwrap_err().contains("k8s\\0"));
        // typeMeta {apiVersion: reflex.dev/v1alpha1, kind: Remediation}, raw: empty.
        let mut body = MAGIC.to_vec();
        let meta = [&[0x0a, 19][..], b"reflex.dev/v1alpha1", &[0x12, 11], b"Remediation"].concat();
        body.extend([0x0a, u8::try_from(meta.len()).unwrap()]);
        body.extend(meta);
        assert!(decode(&body).unwrap_err().contains("custom resources are JSON only"));
    }
}
