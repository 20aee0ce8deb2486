//! Filters that narrow which proxies an acquire may pick.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::proxy::Proxy;

/// Deepest nesting of `any_of` / `all_of` / `none_of` accepted.
pub const MAX_FILTER_DEPTH: usize = 4;
/// Most filter nodes (this filter and every nested one) accepted.
pub const MAX_FILTER_NODES: usize = 64;
/// Mean Earth radius used for great-circle distances, in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// An attribute with an exact-match filter, which storages can index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FilterAttribute {
    /// [`Proxy::country`] (upper-case).
    Country,
    /// [`Proxy::source`].
    Source,
    /// [`Proxy::city`].
    City,
    /// [`Proxy::isp`].
    Isp,
    /// [`Proxy::asn`], as decimal text.
    Asn,
}

impl FilterAttribute {
    /// Every attribute, in a fixed order.
    pub const ALL: [FilterAttribute; 5] = [
        FilterAttribute::Country,
        FilterAttribute::Source,
        FilterAttribute::City,
        FilterAttribute::Isp,
        FilterAttribute::Asn,
    ];

    /// `country`, `source`, `city`, `isp` or `asn`.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterAttribute::Country => "country",
            FilterAttribute::Source => "source",
            FilterAttribute::City => "city",
            FilterAttribute::Isp => "isp",
            FilterAttribute::Asn => "asn",
        }
    }

    /// The proxy's value for this attribute, as text.
    pub fn value_of(self, proxy: &Proxy) -> Option<String> {
        match self {
            FilterAttribute::Country => proxy.country.clone(),
            FilterAttribute::Source => proxy.source.clone(),
            FilterAttribute::City => proxy.city.clone(),
            FilterAttribute::Isp => proxy.isp.clone(),
            FilterAttribute::Asn => proxy.asn.map(|a| a.to_string()),
        }
    }
}

/// Which proxies an acquire may pick. Every field that is set must match; an empty
/// filter matches every proxy.
///
/// - `country`, `source`, `city`, `isp`, `asn`: exact match (country ignores case).
/// - `latitude` + `longitude`: the proxy is at exactly that point; add `radius_km`
///   to match every proxy within that great-circle distance instead.
/// - `any_of`: at least one of these filters matches; `all_of`: each matches;
///   `none_of`: none matches.
///
/// Contradictions and out-of-range values are rejected by [`ProxyFilters::validate`]
/// (which the manager and storages call) before storage is touched.
///
/// ```
/// use lighthouse_lease::ProxyFilters;
///
/// // Argentinian proxies from oxylabs, or any proxy within 50 km of Santiago.
/// let filters = ProxyFilters::new().any_of([
///     ProxyFilters::new().country("AR").source("oxylabs"),
///     ProxyFilters::new().near(-33.45, -70.66, 50.0),
/// ]);
/// assert!(filters.validate().is_ok());
///
/// let bad = ProxyFilters { latitude: Some(10.0), ..Default::default() };
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyFilters {
    /// Country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// City.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Internet service provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// Autonomous system number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Latitude of the point, with `longitude`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude of the point, with `latitude`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// Radius around the point, in kilometres (> 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub radius_km: Option<f64>,
    /// At least one must match (ignored when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<ProxyFilters>,
    /// Each must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<ProxyFilters>,
    /// None may match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub none_of: Vec<ProxyFilters>,
}

impl ProxyFilters {
    /// A filter that matches every proxy.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requires this country.
    #[must_use]
    pub fn country(mut self, v: impl Into<String>) -> Self {
        self.country = Some(v.into());
        self
    }
    /// Requires this provider.
    #[must_use]
    pub fn source(mut self, v: impl Into<String>) -> Self {
        self.source = Some(v.into());
        self
    }
    /// Requires this city.
    #[must_use]
    pub fn city(mut self, v: impl Into<String>) -> Self {
        self.city = Some(v.into());
        self
    }
    /// Requires this ISP.
    #[must_use]
    pub fn isp(mut self, v: impl Into<String>) -> Self {
        self.isp = Some(v.into());
        self
    }
    /// Requires this ASN.
    #[must_use]
    pub fn asn(mut self, v: u32) -> Self {
        self.asn = Some(v);
        self
    }
    /// Requires exactly this location.
    #[must_use]
    pub fn at(mut self, latitude: f64, longitude: f64) -> Self {
        self.latitude = Some(latitude);
        self.longitude = Some(longitude);
        self.radius_km = None;
        self
    }
    /// Requires a location within `radius_km` of the point.
    #[must_use]
    pub fn near(mut self, latitude: f64, longitude: f64, radius_km: f64) -> Self {
        self.latitude = Some(latitude);
        self.longitude = Some(longitude);
        self.radius_km = Some(radius_km);
        self
    }
    /// Adds alternatives, at least one of which must match.
    #[must_use]
    pub fn any_of(mut self, filters: impl IntoIterator<Item = ProxyFilters>) -> Self {
        self.any_of.extend(filters);
        self
    }
    /// Adds filters that must all match.
    #[must_use]
    pub fn all_of(mut self, filters: impl IntoIterator<Item = ProxyFilters>) -> Self {
        self.all_of.extend(filters);
        self
    }
    /// Adds filters none of which may match.
    #[must_use]
    pub fn none_of(mut self, filters: impl IntoIterator<Item = ProxyFilters>) -> Self {
        self.none_of.extend(filters);
        self
    }

    /// Whether this filter matches every proxy (no field set).
    pub fn is_empty(&self) -> bool {
        let ProxyFilters {
            country,
            source,
            city,
            isp,
            asn,
            latitude,
            longitude,
            radius_km,
            any_of,
            all_of,
            none_of,
        } = self;
        country.is_none()
            && source.is_none()
            && city.is_none()
            && isp.is_none()
            && asn.is_none()
            && latitude.is_none()
            && longitude.is_none()
            && radius_km.is_none()
            && any_of.is_empty()
            && all_of.is_empty()
            && none_of.is_empty()
    }

    /// Checks the filter (and every nested one): a point needs both coordinates, in
    /// range; a radius needs a point and must be > 0; text values may not be empty;
    /// nesting is at most [`MAX_FILTER_DEPTH`] deep and [`MAX_FILTER_NODES`] large.
    pub fn validate(&self) -> Result<()> {
        let mut nodes = 0;
        self.validate_at(0, &mut nodes)
    }

    fn validate_at(&self, depth: usize, nodes: &mut usize) -> Result<()> {
        *nodes += 1;
        if *nodes > MAX_FILTER_NODES {
            return Err(Error::InvalidFilter(format!(
                "more than {MAX_FILTER_NODES} nested filters"
            )));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(Error::InvalidFilter(format!(
                "any_of/all_of/none_of nested deeper than {MAX_FILTER_DEPTH} levels"
            )));
        }
        for (name, v) in [
            ("country", &self.country),
            ("source", &self.source),
            ("city", &self.city),
            ("isp", &self.isp),
        ] {
            if let Some(v) = v {
                if v.is_empty() {
                    return Err(Error::InvalidFilter(format!(
                        "{name} is empty (leave it unset to match any)"
                    )));
                }
            }
        }
        match (self.latitude, self.longitude) {
            (Some(_), None) => {
                return Err(Error::InvalidFilter(
                    "latitude is set without longitude".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidFilter(
                    "longitude is set without latitude".into(),
                ))
            }
            (Some(lat), Some(lon)) => {
                if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                    return Err(Error::InvalidFilter(format!(
                        "latitude {lat} is outside -90..=90"
                    )));
                }
                if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                    return Err(Error::InvalidFilter(format!(
                        "longitude {lon} is outside -180..=180"
                    )));
                }
            }
            (None, None) => {}
        }
        if let Some(r) = self.radius_km {
            if self.latitude.is_none() {
                return Err(Error::InvalidFilter(
                    "radius_km is set without latitude and longitude".into(),
                ));
            }
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::InvalidFilter(format!(
                    "radius_km must be a finite number > 0, got {r}"
                )));
            }
        }
        for f in self.any_of.iter().chain(&self.all_of).chain(&self.none_of) {
            f.validate_at(depth + 1, nodes)?;
        }
        Ok(())
    }

    /// Whether the proxy matches (status and capacity are not looked at).
    pub fn matches(&self, proxy: &Proxy) -> bool {
        let text_ok = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        if let Some(c) = &self.country {
            if !proxy
                .country
                .as_deref()
                .is_some_and(|pc| pc.eq_ignore_ascii_case(c))
            {
                return false;
            }
        }
        if !text_ok(&self.source, &proxy.source)
            || !text_ok(&self.city, &proxy.city)
            || !text_ok(&self.isp, &proxy.isp)
        {
            return false;
        }
        if self.asn.is_some() && self.asn != proxy.asn {
            return false;
        }
        if let (Some(lat), Some(lon)) = (self.latitude, self.longitude) {
            let (Some(plat), Some(plon)) = (proxy.latitude, proxy.longitude) else {
                return false;
            };
            match self.radius_km {
                Some(r) => {
                    if haversine_km(lat, lon, plat, plon) > r {
                        return false;
                    }
                }
                None => {
                    if (plat - lat).abs() > 1e-9 || (plon - lon).abs() > 1e-9 {
                        return false;
                    }
                }
            }
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|f| f.matches(proxy)) {
            return false;
        }
        if !self.all_of.iter().all(|f| f.matches(proxy)) {
            return false;
        }
        !self.none_of.iter().any(|f| f.matches(proxy))
    }

    /// The exact-match constraints every matching proxy must meet: this filter's
    /// attributes and those of `all_of` filters, recursively. Storages use them to
    /// pick an index; the value of `country` is upper-cased.
    pub fn required_attributes(&self) -> Vec<(FilterAttribute, String)> {
        let mut out = Vec::new();
        self.collect_required(&mut out);
        out
    }

    fn collect_required(&self, out: &mut Vec<(FilterAttribute, String)>) {
        if let Some(v) = &self.country {
            out.push((FilterAttribute::Country, v.to_ascii_uppercase()));
        }
        if let Some(v) = &self.source {
            out.push((FilterAttribute::Source, v.clone()));
        }
        if let Some(v) = &self.city {
            out.push((FilterAttribute::City, v.clone()));
        }
        if let Some(v) = &self.isp {
            out.push((FilterAttribute::Isp, v.clone()));
        }
        if let Some(v) = self.asn {
            out.push((FilterAttribute::Asn, v.to_string()));
        }
        for f in &self.all_of {
            f.collect_required(out);
        }
    }
}

/// Great-circle distance between two points in degrees, in kilometres (haversine).
///
/// ```
/// // Buenos Aires to Santiago: about 1,140 km.
/// let d = lighthouse_lease::filters::haversine_km(-34.60, -58.38, -33.45, -70.66);
/// assert!((d - 1140.0).abs() < 15.0);
/// ```
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}
