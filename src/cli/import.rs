//! Reading proxies from CSV, JSON and JSON Lines files for `lighthouse proxy import`.

use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::proxy::{Proxy, ProxyProtocol, ProxyStatus};

/// One proxy as written in an import file. Every column but `host` and `port` is
/// optional; empty CSV cells count as absent.
///
/// CSV header (any order, unknown columns are an error):
/// `host,port,protocol,username,password,max_concurrency,status,source,country,city,isp,asn,latitude,longitude`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRecord {
    /// IP address or host name.
    pub host: String,
    /// TCP port.
    pub port: i64,
    /// `http` (default), `https`, `socks4`, `socks5`.
    pub protocol: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Most concurrent leases; absent for unlimited.
    pub max_concurrency: Option<i64>,
    /// `active` (default), `inactive`, `slow`, `banned`.
    pub status: Option<String>,
    /// Provider.
    pub source: Option<String>,
    /// Country code.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// ISP.
    pub isp: Option<String>,
    /// ASN.
    pub asn: Option<i64>,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
}

impl ProxyRecord {
    /// The validated proxy for a pool.
    pub fn to_proxy(&self, pool_id: Uuid) -> Result<Proxy> {
        let port = u16::try_from(self.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Error::invalid_proxy("port", format!("{} is not in 1..=65535", self.port))
            })?;
        let mut b = Proxy::builder(pool_id, self.host.trim(), port);
        if let Some(p) = &self.protocol {
            b = b.protocol(p.parse::<ProxyProtocol>()?);
        }
        if let Some(s) = &self.status {
            b = b.status(s.parse::<ProxyStatus>()?);
        }
        match (&self.username, &self.password) {
            (Some(u), p) => b = b.credentials(u.clone(), p.clone().unwrap_or_default()),
            (None, Some(_)) => {
                return Err(Error::invalid_proxy(
                    "credentials",
                    "password given without username",
                ))
            }
            (None, None) => {}
        }
        if let Some(m) = self.max_concurrency {
            let m = u32::try_from(m).map_err(|_| {
                Error::invalid_proxy("max_concurrency", format!("{m} is not a count"))
            })?;
            b = b.max_concurrency(m);
        }
        if let Some(v) = &self.source {
            b = b.source(v.clone());
        }
        if let Some(v) = &self.country {
            b = b.country(v.clone());
        }
        if let Some(v) = &self.city {
            b = b.city(v.clone());
        }
        if let Some(v) = &self.isp {
            b = b.isp(v.clone());
        }
        if let Some(a) = self.asn {
            let a = u32::try_from(a)
                .map_err(|_| Error::invalid_proxy("asn", format!("{a} is not an ASN")))?;
            b = b.asn(a);
        }
        let mut proxy = b.build_unchecked();
        proxy.latitude = self.latitude;
        proxy.longitude = self.longitude;
        proxy.normalize()?;
        Ok(proxy)
    }
}

/// The format of an import file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
}

impl ImportFormat {
    /// Guesses the format from the file name.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(ImportFormat::Csv),
            "json" => Some(ImportFormat::Json),
            "jsonl" | "ndjson" => Some(ImportFormat::Jsonl),
            _ => None,
        }
    }
}

/// What an import file held: the valid proxies, and a message per invalid record
/// naming its line (CSV, JSON Lines) or record number (JSON).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid proxies, in file order.
    pub proxies: Vec<Proxy>,
    /// One message per invalid record.
    pub errors: Vec<String>,
}

/// Parses an import file's text.
pub fn parse(text: &str, format: ImportFormat, pool_id: Uuid) -> Parsed {
    let mut out = Parsed::default();
    let mut push = |place: String, rec: std::result::Result<ProxyRecord, String>| match rec
        .and_then(|r| r.to_proxy(pool_id).map_err(|e| e.to_string()))
    {
        Ok(p) => out.proxies.push(p),
        Err(e) => out.errors.push(format!("{place}: {e}")),
    };
    match format {
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            for (i, rec) in reader.deserialize::<ProxyRecord>().enumerate() {
                let line = match &rec {
                    Err(e) => e.position().map_or(i as u64 + 2, |p| p.line()),
                    Ok(_) => i as u64 + 2,
                };
                push(format!("line {line}"), rec.map_err(|e| csv_error(&e)));
            }
        }
        ImportFormat::Json => match serde_json::from_str::<Vec<serde_json::Value>>(text) {
            Err(e) => out.errors.push(format!(
                "line {}: not a JSON array of objects: {e}",
                e.line()
            )),
            Ok(values) => {
                for (i, v) in values.into_iter().enumerate() {
                    push(
                        format!("record {}", i + 1),
                        serde_json::from_value(v).map_err(|e| e.to_string()),
                    );
                }
            }
        },
        ImportFormat::Jsonl => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                push(
                    format!("line {}", i + 1),
                    serde_json::from_str(line).map_err(|e| e.to_string()),
                );
            }
        }
    }
    out
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("column {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        _ => e.to_string(),
    }
}
