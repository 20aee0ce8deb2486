//! Conversions between the crate's types and what Redis stores: plain hash
//! fields, script arguments, and the filter JSON the acquire script decodes.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filters::ProxyFilters;
use crate::lease::{Lease, LeaseStatus};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyCredentials, ProxyEndpoint, ProxyProtocol, ProxyStatus};

pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::backend(format!("corrupted Redis state: {}", what.into()), None)
}

/// The settable fields of a proxy as (field, value) pairs, as the proxy scripts
/// take them (optional fields that are `None` are left out).
pub(crate) fn proxy_fields(p: &Proxy) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("host", p.host.clone()),
        ("port", p.port.to_string()),
        ("protocol", p.protocol.as_str().to_string()),
        ("status", p.status.as_str().to_string()),
    ];
    if let Some(m) = p.max_concurrency {
        f.push(("max_concurrency", m.to_string()));
    }
    if let Some(c) = &p.credentials {
        f.push(("username", c.username.clone()));
        f.push(("password", c.password.clone()));
    }
    for (k, v) in [
        ("source", &p.source),
        ("country", &p.country),
        ("city", &p.city),
        ("isp", &p.isp),
    ] {
        if let Some(v) = v {
            f.push((k, v.clone()));
        }
    }
    if let Some(a) = p.asn {
        f.push(("asn", a.to_string()));
    }
    if let (Some(lat), Some(lon)) = (p.latitude, p.longitude) {
        f.push(("latitude", lat.to_string()));
        f.push(("longitude", lon.to_string()));
    }
    if let Some(at) = p.checked_at {
        f.push(("checked_at", format_time(at)));
    }
    f
}

/// RFC 3339 in UTC, with as many fraction digits as needed to read it back.
pub(crate) fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn need<'a>(h: &'a HashMap<String, String>, what: &str, field: &str) -> Result<&'a str> {
    h.get(field)
        .map(String::as_str)
        .ok_or_else(|| corrupt(format!("{what} has no field {field}")))
}

fn parse<T: std::str::FromStr>(h: &HashMap<String, String>, what: &str, field: &str) -> Result<T> {
    need(h, what, field)?
        .parse()
        .map_err(|_| corrupt(format!("{what} field {field} is not valid")))
}

fn parse_opt<T: std::str::FromStr>(
    h: &HashMap<String, String>,
    what: &str,
    field: &str,
) -> Result<Option<T>> {
    match h.get(field) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(format!("{what} field {field} is not valid"))),
    }
}

pub(crate) fn ms_to_time(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| corrupt(format!("time {ms} ms is out of range")))
}

/// A proxy from its hash (`HGETALL <ns>:{<pool>}:proxy:<id>`).
pub(crate) fn proxy_from_hash(h: &HashMap<String, String>) -> Result<Proxy> {
    let what = "proxy hash";
    let protocol: ProxyProtocol = need(h, what, "protocol")?
        .parse()
        .map_err(|_| corrupt("proxy protocol"))?;
    let status: ProxyStatus = need(h, what, "status")?
        .parse()
        .map_err(|_| corrupt("proxy status"))?;
    let credentials = match (h.get("username"), h.get("password")) {
        (Some(u), p) => Some(ProxyCredentials::new(
            u.clone(),
            p.cloned().unwrap_or_default(),
        )),
        (None, _) => None,
    };
    let checked_at = match h.get("checked_at") {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| corrupt("proxy checked_at"))?
                .to_utc(),
        ),
    };
    Ok(Proxy {
        id: parse(h, what, "id")?,
        pool_id: parse(h, what, "pool_id")?,
        host: need(h, what, "host")?.to_string(),
        port: parse(h, what, "port")?,
        protocol,
        credentials,
        status,
        max_concurrency: parse_opt(h, what, "max_concurrency")?,
        current_leases: parse(h, what, "current_leases")?,
        source: h.get("source").cloned(),
        country: h.get("country").cloned(),
        city: h.get("city").cloned(),
        isp: h.get("isp").cloned(),
        asn: parse_opt(h, what, "asn")?,
        latitude: parse_opt(h, what, "latitude")?,
        longitude: parse_opt(h, what, "longitude")?,
        checked_at,
        consecutive_failures: parse_opt(h, what, "consecutive_failures")?.unwrap_or(0),
        cooldown_until: parse_opt::<i64>(h, what, "cooldown_until_ms")?
            .map(ms_to_time)
            .transpose()?,
        last_failure: h.get("last_failure").cloned(),
        latency_ms: parse_opt(h, what, "latency_ms")?,
    })
}

/// A proxy from a script reply `{'OK', field, value, ...}`.
pub(crate) fn proxy_from_reply(reply: &[String]) -> Result<Proxy> {
    let mut h = HashMap::with_capacity(reply.len() / 2);
    for pair in reply.get(1..).unwrap_or_default().chunks(2) {
        if let [k, v] = pair {
            h.insert(k.clone(), v.clone());
        }
    }
    proxy_from_hash(&h)
}

/// A lease from its record (`HGETALL <ns>:{<pool>}:lease:<id>`).
pub(crate) fn lease_from_hash(h: &HashMap<String, String>, pool_name: &str) -> Result<Lease> {
    let what = "lease record";
    let status = match need(h, what, "status")? {
        "active" => LeaseStatus::Active,
        "released" => LeaseStatus::Released,
        "expired" => LeaseStatus::Expired,
        other => return Err(corrupt(format!("lease status {other:?}"))),
    };
    let credentials = h
        .get("username")
        .map(|u| ProxyCredentials::new(u.clone(), h.get("password").cloned().unwrap_or_default()));
    let protocol: ProxyProtocol = need(h, what, "protocol")?
        .parse()
        .map_err(|_| corrupt("lease protocol"))?;
    Ok(Lease {
        id: parse(h, what, "id")?,
        proxy_id: parse(h, what, "proxy_id")?,
        consumer_id: parse(h, what, "consumer_id")?,
        consumer_name: need(h, what, "consumer")?.to_string(),
        pool_id: parse(h, what, "pool_id")?,
        pool_name: pool_name.to_string(),
        status,
        acquired_at: ms_to_time(parse(h, what, "acquired_at_ms")?)?,
        expires_at: ms_to_time(parse(h, what, "expires_at_ms")?)?,
        released_at: parse_opt::<i64>(h, what, "released_at_ms")?
            .map(ms_to_time)
            .transpose()?,
        proxy: ProxyEndpoint {
            host: need(h, what, "host")?.to_string(),
            port: parse(h, what, "port")?,
            protocol,
            credentials,
        },
        fencing_token: parse_opt::<u64>(h, what, "token")?.unwrap_or(0),
    })
}

/// A pool from its meta hash, or `None` when it does not exist or is being removed.
pub(crate) fn pool_from_hash(h: &HashMap<String, String>) -> Result<Option<ProxyPool>> {
    if h.is_empty() || h.contains_key("removing") {
        return Ok(None);
    }
    let what = "pool meta";
    Ok(Some(ProxyPool {
        id: parse(h, what, "id")?,
        name: need(h, what, "name")?.to_string(),
        description: h.get("description").cloned(),
    }))
}

pub(crate) fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| corrupt(format!("{s:?} is not a uuid")))
}

/// The filter as JSON with `ProxyFilters`' field names (unset fields and empty
/// lists left out), for the acquire script's `cjson.decode`. Numbers are written
/// in Rust's shortest round-trip form, which Lua reads back to the same double.
pub(crate) fn filter_json(f: &ProxyFilters) -> String {
    let mut out = String::new();
    write_filter(f, &mut out);
    out
}

fn write_filter(f: &ProxyFilters, out: &mut String) {
    out.push('{');
    let mut first = true;
    let mut key = |out: &mut String, k: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
    };
    for (k, v) in [
        ("country", &f.country),
        ("source", &f.source),
        ("city", &f.city),
        ("isp", &f.isp),
    ] {
        if let Some(v) = v {
            key(out, k);
            write_str(v, out);
        }
    }
    if let Some(a) = f.asn {
        key(out, "asn");
        let _ = write!(out, "{a}");
    }
    for (k, v) in [
        ("latitude", f.latitude),
        ("longitude", f.longitude),
        ("radius_km", f.radius_km),
    ] {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            key(out, k);
            let _ = write!(out, "{v}");
        }
    }
    for (k, list) in [
        ("any_of", &f.any_of),
        ("all_of", &f.all_of),
        ("none_of", &f.none_of),
    ] {
        if !list.is_empty() {
            key(out, k);
            out.push('[');
            for (i, sub) in list.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_filter(sub, out);
            }
            out.push(']');
        }
    }
    out.push('}');
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_json_shape() {
        let f = ProxyFilters::new()
            .country("ar")
            .asn(7303)
            .near(-34.52, -58.45, 50.0)
            .any_of([ProxyFilters::new().city("C\"ó\\r\n")]);
        assert_eq!(
            filter_json(&f),
            r#"{"country":"ar","asn":7303,"latitude":-34.52,"longitude":-58.45,"radius_km":50,"any_of":[{"city":"C\"ó\\r\u000a"}]}"#
        );
        assert_eq!(filter_json(&ProxyFilters::new()), "{}");
    }
}
