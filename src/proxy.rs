//! Proxies and their connection details.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest text attribute (source, city, isp, country, credentials) accepted, in bytes.
pub const MAX_ATTRIBUTE_LEN: usize = 256;

/// The protocol a proxy speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// HTTP proxy (`CONNECT` for TLS targets).
    #[default]
    Http,
    /// HTTP proxy reached over TLS.
    Https,
    /// SOCKS4.
    Socks4,
    /// SOCKS5.
    Socks5,
}

impl ProxyProtocol {
    /// The URL scheme: `http`, `https`, `socks4` or `socks5`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Http => "http",
            ProxyProtocol::Https => "https",
            ProxyProtocol::Socks4 => "socks4",
            ProxyProtocol::Socks5 => "socks5",
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyProtocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(ProxyProtocol::Http),
            "https" => Ok(ProxyProtocol::Https),
            "socks4" => Ok(ProxyProtocol::Socks4),
            "socks5" => Ok(ProxyProtocol::Socks5),
            _ => Err(Error::invalid_proxy(
                "protocol",
                format!("{s:?} is not one of http, https, socks4, socks5"),
            )),
        }
    }
}

/// A proxy's health and whether it may be leased. Only [`ProxyStatus::Active`]
/// proxies are ever leased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyStatus {
    /// Healthy and leasable.
    #[default]
    Active,
    /// Taken out of service by an operator or a failed health check.
    Inactive,
    /// Works but answered slower than the health check's threshold; not leased.
    Slow,
    /// Blocked by targets; not leased.
    Banned,
}

impl ProxyStatus {
    /// `active`, `inactive`, `slow` or `banned`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyStatus::Active => "active",
            ProxyStatus::Inactive => "inactive",
            ProxyStatus::Slow => "slow",
            ProxyStatus::Banned => "banned",
        }
    }
}

impl fmt::Display for ProxyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(ProxyStatus::Active),
            "inactive" => Ok(ProxyStatus::Inactive),
            "slow" => Ok(ProxyStatus::Slow),
            "banned" => Ok(ProxyStatus::Banned),
            _ => Err(Error::invalid_proxy(
                "status",
                format!("{s:?} is not one of active, inactive, slow, banned"),
            )),
        }
    }
}

/// Username and password for a proxy. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyCredentials {
    /// User name (not empty).
    pub username: String,
    /// Password (may be empty).
    pub password: String,
}

impl ProxyCredentials {
    /// Username and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        ProxyCredentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a worker needs to connect through a proxy; every [`crate::Lease`] carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyEndpoint {
    /// IP address or host name (IPv6 without brackets).
    pub host: String,
    /// TCP port, 1..=65535.
    pub port: u16,
    /// Protocol.
    pub protocol: ProxyProtocol,
    /// Credentials, if the proxy needs them.
    pub credentials: Option<ProxyCredentials>,
}

/// Characters escaped in the userinfo part of a URL (RFC 3986 unreserved stay as they are).
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl ProxyEndpoint {
    /// The proxy URL, for example `http://user:p%40ss@10.0.0.1:8080` or
    /// `socks5://[2001:db8::1]:1080`. Credentials are percent-encoded and IPv6
    /// hosts bracketed, so the result parses back to the same parts.
    ///
    /// ```
    /// use lighthouse_lease::{ProxyCredentials, ProxyEndpoint, ProxyProtocol};
    /// let ep = ProxyEndpoint {
    ///     host: "2001:db8::1".into(),
    ///     port: 1080,
    ///     protocol: ProxyProtocol::Socks5,
    ///     credentials: Some(ProxyCredentials::new("me", "p@ss:w/rd")),
    /// };
    /// assert_eq!(ep.url(), "socks5://me:p%40ss%3Aw%2Frd@[2001:db8::1]:1080");
    /// ```
    pub fn url(&self) -> String {
        let mut url = format!("{}://", self.protocol);
        if let Some(c) = &self.credentials {
            url.push_str(&utf8_percent_encode(&c.username, USERINFO).to_string());
            url.push(':');
            url.push_str(&utf8_percent_encode(&c.password, USERINFO).to_string());
            url.push('@');
        }
        if self.host.contains(':') {
            url.push('[');
            url.push_str(&self.host);
            url.push(']');
        } else {
            url.push_str(&self.host);
        }
        url.push(':');
        url.push_str(&self.port.to_string());
        url
    }

    /// The URL with the password replaced by `***`, for logs and listings.
    ///
    /// ```
    /// # use lighthouse_lease::{ProxyCredentials, ProxyEndpoint, ProxyProtocol};
    /// let ep = ProxyEndpoint {
    ///     host: "10.0.0.1".into(),
    ///     port: 8080,
    ///     protocol: ProxyProtocol::Http,
    ///     credentials: Some(ProxyCredentials::new("me", "secret")),
    /// };
    /// assert_eq!(ep.redacted_url(), "http://me:***@10.0.0.1:8080");
    /// ```
    pub fn redacted_url(&self) -> String {
        let mut shown = self.clone();
        if let Some(c) = &mut shown.credentials {
            c.password = "***".into();
        }
        shown.url().replace("%2A%2A%2A@", "***@")
    }
}

/// One proxy in a pool.
///
/// Build one with [`Proxy::builder`], which validates every field. Storages
/// validate again before they write, so a `Proxy` changed by hand with a bad value
/// is rejected with [`Error::InvalidProxy`] and nothing is written.
///
/// ```
/// use lighthouse_lease::{Proxy, ProxyPool, ProxyProtocol};
///
/// let pool = ProxyPool::new("latam-residential")?;
/// let proxy = Proxy::builder(pool.id, "1.1.1.1", 8080)
///     .protocol(ProxyProtocol::Http)
///     .max_concurrency(2)
///     .country("ar")
///     .source("oxylabs")
///     .build()?;
/// assert_eq!(proxy.country.as_deref(), Some("AR"));
/// assert_eq!(proxy.url(), "http://1.1.1.1:8080");
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Unique id.
    pub id: Uuid,
    /// The pool it belongs to.
    pub pool_id: Uuid,
    /// IP address or host name (IPv6 without brackets).
    pub host: String,
    /// TCP port, 1..=65535.
    pub port: u16,
    /// Protocol.
    pub protocol: ProxyProtocol,
    /// Credentials, if the proxy needs them.
    pub credentials: Option<ProxyCredentials>,
    /// Only `active` proxies are leased.
    pub status: ProxyStatus,
    /// Most leases the proxy may hold at once; `None` means unlimited.
    pub max_concurrency: Option<u32>,
    /// Live leases right now. Kept by the storage; ignored when adding or updating.
    pub current_leases: u32,
    /// Provider, such as `oxylabs`.
    pub source: Option<String>,
    /// ISO 3166 country code, stored upper-case (filters match it case-insensitively).
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Internet service provider.
    pub isp: Option<String>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Latitude in degrees, -90..=90 (set together with longitude).
    pub latitude: Option<f64>,
    /// Longitude in degrees, -180..=180 (set together with latitude).
    pub longitude: Option<f64>,
    /// When a health check last looked at it.
    pub checked_at: Option<DateTime<Utc>>,
    /// Failures reported in a row since the last success (kept by the storage).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Set while the proxy cools down after a reported failure: it is not leased
    /// until the storage lifts the cooldown, at the first acquire or cleanup after
    /// this time (kept by the storage).
    #[serde(default)]
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Resting under its pool's rate limit until then (see
    /// [`crate::RateLimit`]): not leased meanwhile, back by itself (kept by the
    /// storage).
    #[serde(default)]
    pub rest_until: Option<DateTime<Utc>>,
    /// The reason given with the last reported failure (kept by the storage).
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Round trip measured by the last health check that got an answer, in
    /// milliseconds (kept by the storage; the `lowest_latency` selector uses it).
    #[serde(default)]
    pub latency_ms: Option<u32>,
}

impl Proxy {
    /// Starts building a proxy for a pool. See [`ProxyBuilder`].
    pub fn builder(pool_id: Uuid, host: impl Into<String>, port: u16) -> ProxyBuilder {
        ProxyBuilder {
            proxy: Proxy {
                id: Uuid::new_v4(),
                pool_id,
                host: host.into(),
                port,
                protocol: ProxyProtocol::Http,
                credentials: None,
                status: ProxyStatus::Active,
                max_concurrency: None,
                current_leases: 0,
                source: None,
                country: None,
                city: None,
                isp: None,
                asn: None,
                latitude: None,
                longitude: None,
                checked_at: None,
                consecutive_failures: 0,
                cooldown_until: None,
                rest_until: None,
                last_failure: None,
                latency_ms: None,
            },
        }
    }

    /// Connection details.
    pub fn endpoint(&self) -> ProxyEndpoint {
        ProxyEndpoint {
            host: self.host.clone(),
            port: self.port,
            protocol: self.protocol,
            credentials: self.credentials.clone(),
        }
    }

    /// The proxy URL; see [`ProxyEndpoint::url`].
    pub fn url(&self) -> String {
        self.endpoint().url()
    }

    /// Whether one more lease fits (ignores status).
    pub fn has_capacity(&self) -> bool {
        self.max_concurrency
            .is_none_or(|max| self.current_leases < max)
    }

    /// Whether an acquire may pick it now: active, not full, not cooling down.
    pub fn is_available(&self) -> bool {
        self.status == ProxyStatus::Active
            && self.has_capacity()
            && self.cooldown_until.is_none()
            && self.rest_until.is_none()
    }

    /// Brings fields to their canonical form (upper-case country, host without
    /// IPv6 brackets), then checks every field.
    pub fn normalize(&mut self) -> Result<()> {
        if self.host.starts_with('[') && self.host.ends_with(']') && self.host.len() > 2 {
            self.host = self.host[1..self.host.len() - 1].to_string();
        }
        if let Some(c) = &mut self.country {
            c.make_ascii_uppercase();
        }
        self.validate()
    }

    /// Checks every field; storages call it before they write.
    pub fn validate(&self) -> Result<()> {
        validate_host(&self.host)?;
        if self.port == 0 {
            return Err(Error::invalid_proxy("port", "must be in 1..=65535, got 0"));
        }
        if let Some(c) = &self.credentials {
            if c.username.is_empty() {
                return Err(Error::invalid_proxy("credentials", "username is empty"));
            }
            check_text("credentials", &c.username)?;
            if c.password.len() > MAX_ATTRIBUTE_LEN {
                return Err(Error::invalid_proxy(
                    "credentials",
                    format!("password is longer than {MAX_ATTRIBUTE_LEN} bytes"),
                ));
            }
        }
        if self.max_concurrency == Some(0) {
            return Err(Error::invalid_proxy(
                "max_concurrency",
                "must be at least 1 (use None for unlimited)",
            ));
        }
        for (field, value) in [
            ("source", &self.source),
            ("country", &self.country),
            ("city", &self.city),
            ("isp", &self.isp),
        ] {
            if let Some(v) = value {
                check_text(field, v)?;
            }
        }
        if let Some(c) = &self.country {
            if c.chars().any(|ch| ch.is_ascii_lowercase()) {
                return Err(Error::invalid_proxy(
                    "country",
                    "must be upper-case (Proxy::normalize or the builder does this)",
                ));
            }
        }
        match (self.latitude, self.longitude) {
            (None, None) => {}
            (Some(lat), Some(lon)) => {
                if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                    return Err(Error::invalid_proxy(
                        "latitude",
                        format!("{lat} is outside -90..=90"),
                    ));
                }
                if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                    return Err(Error::invalid_proxy(
                        "longitude",
                        format!("{lon} is outside -180..=180"),
                    ));
                }
            }
            (Some(_), None) => {
                return Err(Error::invalid_proxy(
                    "longitude",
                    "latitude is set but longitude is not",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid_proxy(
                    "latitude",
                    "longitude is set but latitude is not",
                ))
            }
        }
        Ok(())
    }
}

fn check_text(field: &'static str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid_proxy(field, "is empty (use None instead)"));
    }
    if v.len() > MAX_ATTRIBUTE_LEN {
        return Err(Error::invalid_proxy(
            field,
            format!("is longer than {MAX_ATTRIBUTE_LEN} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid_proxy(field, "contains a control character"));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<()> {
    if host.is_empty() {
        return Err(Error::invalid_proxy("host", "is empty"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = |reason: String| Err(Error::invalid_proxy("host", format!("{host:?} {reason}")));
    if host.len() > 253 {
        return bad("is longer than 253 bytes".into());
    }
    if host.contains(':') {
        return bad("is not a valid IPv6 address".into());
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has an empty label or one longer than 63 bytes".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return bad(format!("is neither an IP address nor a host name ({c:?})"));
        }
    }
    Ok(())
}

/// Builds a validated [`Proxy`]; see [`Proxy::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ProxyBuilder {
    proxy: Proxy,
}

impl ProxyBuilder {
    /// Uses this id instead of a fresh one.
    pub fn id(mut self, id: Uuid) -> Self {
        self.proxy.id = id;
        self
    }
    /// Protocol (default `http`).
    pub fn protocol(mut self, protocol: ProxyProtocol) -> Self {
        self.proxy.protocol = protocol;
        self
    }
    /// Username and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.proxy.credentials = Some(ProxyCredentials::new(username, password));
        self
    }
    /// Status (default `active`).
    pub fn status(mut self, status: ProxyStatus) -> Self {
        self.proxy.status = status;
        self
    }
    /// Most concurrent leases (default unlimited).
    pub fn max_concurrency(mut self, max: u32) -> Self {
        self.proxy.max_concurrency = Some(max);
        self
    }
    /// Provider.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.proxy.source = Some(source.into());
        self
    }
    /// Country code (stored upper-case).
    pub fn country(mut self, country: impl Into<String>) -> Self {
        self.proxy.country = Some(country.into());
        self
    }
    /// City.
    pub fn city(mut self, city: impl Into<String>) -> Self {
        self.proxy.city = Some(city.into());
        self
    }
    /// Internet service provider.
    pub fn isp(mut self, isp: impl Into<String>) -> Self {
        self.proxy.isp = Some(isp.into());
        self
    }
    /// Autonomous system number.
    pub fn asn(mut self, asn: u32) -> Self {
        self.proxy.asn = Some(asn);
        self
    }
    /// Location in degrees.
    pub fn location(mut self, latitude: f64, longitude: f64) -> Self {
        self.proxy.latitude = Some(latitude);
        self.proxy.longitude = Some(longitude);
        self
    }
    /// The proxy as set so far, not yet validated (callers validate later).
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    pub(crate) fn build_unchecked(self) -> Proxy {
        self.proxy
    }

    /// Normalizes and validates, see [`Proxy::normalize`].
    pub fn build(self) -> Result<Proxy> {
        let mut proxy = self.proxy;
        proxy.normalize()?;
        Ok(proxy)
    }
}
