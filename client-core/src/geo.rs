//! Hazard-area geometries: parsing and hard validation of GeoJSON polygons (WGS84), and the few
//! measurements the reports need.
//!
//! [`parse_area_geometry`] accepts a GeoJSON `Polygon` or `MultiPolygon` geometry object, or a
//! `Feature` wrapping one, and refuses anything that is not a valid area: rings that are open,
//! too short, self-intersecting or without area, positions that are not 2 or 3 finite numbers,
//! coordinates outside [-180, 180] × [-90, 90], and geometries of more than [`MAX_VERTICES`]
//! positions. Every error names the place of the fault (polygon, ring, position) so a field
//! officer can find it in a GIS. The same function runs on the device and on the server, so the
//! two refuse the same inputs.
//!
//! Areas are computed on a sphere of radius 6 378 137 m with the spherical excess formula used
//! by turf's `area` (Chamberlain & Duquette), which is within a fraction of a percent of the
//! ellipsoidal area for hazard-area sizes. Altitudes, when present, are accepted and dropped:
//! hazard areas are surfaces.

use std::fmt;

use serde_json::Value;

/// Largest number of positions (over all rings, closing positions included) accepted in one
/// geometry. Keeps the quadratic worst case of the self-intersection test bounded and documents
/// stay small enough to sync over poor links.
pub const MAX_VERTICES: usize = 10_000;

/// Radius of the sphere used for areas, in metres (WGS84 semi-major axis, as in turf).
const EARTH_RADIUS_M: f64 = 6_378_137.0;

/// Smallest and largest areas [`square_polygon`] produces, in m².
const SQUARE_MIN_M2: f64 = 1.0;
const SQUARE_MAX_M2: f64 = 1.0e12;

/// A `[longitude, latitude]` pair in decimal degrees (WGS84).
pub type Position = [f64; 2];

/// Whether the geometry was given as a single polygon or as several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryKind {
    /// A GeoJSON `Polygon`: one exterior ring and its holes.
    Polygon,
    /// A GeoJSON `MultiPolygon`: several polygons, each with an exterior ring and holes.
    MultiPolygon,
}

/// A validated hazard-area geometry.
///
/// Only [`parse_area_geometry`] builds one, so every value satisfies the hard checks: each ring
/// is closed, has at least 4 positions, does not cross itself and encloses an area.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    kind: GeometryKind,
    /// Polygons → rings (exterior first, then holes) → positions (closed: last = first).
    polygons: Vec<Vec<Vec<Position>>>,
}

/// Where in the geometry a fault was found. Indices count from 0, in GeoJSON order; a plain
/// `Polygon` is polygon 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// Index of the polygon (always 0 for a `Polygon`).
    pub polygon: Option<usize>,
    /// Index of the ring within the polygon: 0 is the exterior, 1… are holes.
    pub ring: Option<usize>,
    /// Index of the position within the ring.
    pub position: Option<usize>,
}

impl Location {
    fn polygon(polygon: usize) -> Self {
        Location {
            polygon: Some(polygon),
            ..Location::default()
        }
    }

    fn ring(polygon: usize, ring: usize) -> Self {
        Location {
            polygon: Some(polygon),
            ring: Some(ring),
            position: None,
        }
    }

    fn position(polygon: usize, ring: usize, position: usize) -> Self {
        Location {
            polygon: Some(polygon),
            ring: Some(ring),
            position: Some(position),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            self.polygon.map(|i| format!("polygon {i}")),
            self.ring.map(|i| format!("ring {i}")),
            self.position.map(|i| format!("position {i}")),
        ];
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        if parts.is_empty() {
            f.write_str("coordinates")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One edge of a ring, for error messages: from position `from` to position `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    /// Index of the position the edge starts at.
    pub from: usize,
    /// Index of the position the edge ends at.
    pub to: usize,
    /// Coordinates of the start.
    pub start: Position,
    /// Coordinates of the end.
    pub end: Position,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the edge from position {} {} to position {} {}",
            self.from,
            Pt(self.start),
            self.to,
            Pt(self.end)
        )
    }
}

/// Formats a position the way GeoJSON writes it: `[18.4, 43.8]`.
struct Pt(Position);

impl fmt::Display for Pt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.0[0], self.0[1])
    }
}

/// Why a geometry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// The text is not JSON at all.
    #[error("not valid JSON (line {line}, column {column})")]
    InvalidJson {
        /// Line of the fault, from 1.
        line: usize,
        /// Column of the fault, from 1.
        column: usize,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is not an object with a string `type` member.
    #[error("expected a GeoJSON object with a \"type\" member, found {found}")]
    NotGeoJson {
        /// What was found instead.
        found: &'static str,
    },
    /// The GeoJSON type cannot describe an area (a `Point`, a `FeatureCollection`, …).
    #[error(
        "expected a Polygon or MultiPolygon geometry (or a Feature wrapping one), found \"{found}\""
    )]
    UnsupportedType {
        /// The `type` that was found (cut to 40 characters).
        found: String,
    },
    /// A `Feature` whose `geometry` is missing or null.
    #[error("the Feature has no geometry")]
    MissingGeometry,
    /// The nesting of `coordinates` is wrong at `at`.
    #[error("{at}: expected {expected}, found {found}")]
    Malformed {
        /// Where the fault is.
        at: Location,
        /// What GeoJSON requires there.
        expected: &'static str,
        /// What was found instead.
        found: &'static str,
    },
    /// A `MultiPolygon` without any polygon.
    #[error("the MultiPolygon has no polygons")]
    NoPolygons,
    /// A polygon without any ring.
    #[error("polygon {polygon} has no rings; it needs at least its exterior ring")]
    NoRings {
        /// Index of the polygon.
        polygon: usize,
    },
    /// A position that is not an array of 2 or 3 numbers.
    #[error(
        "{at}: a position must be [longitude, latitude] or [longitude, latitude, altitude], found {found}"
    )]
    BadPosition {
        /// Where the position is.
        at: Location,
        /// What was found instead.
        found: String,
    },
    /// A coordinate that is not a finite number.
    #[error("{at}: coordinate {index} is not a finite number")]
    NonFinite {
        /// Where the position is.
        at: Location,
        /// Index of the coordinate in the position (0 longitude, 1 latitude, 2 altitude).
        index: usize,
    },
    /// A longitude outside [-180, 180].
    #[error("{at}: longitude {value} is outside [-180, 180]")]
    LongitudeOutOfRange {
        /// Where the position is.
        at: Location,
        /// The longitude found.
        value: f64,
    },
    /// A latitude outside [-90, 90].
    #[error(
        "{at}: latitude {value} is outside [-90, 90] (GeoJSON positions are [longitude, latitude])"
    )]
    LatitudeOutOfRange {
        /// Where the position is.
        at: Location,
        /// The latitude found.
        value: f64,
    },
    /// More positions than [`MAX_VERTICES`] in the whole geometry.
    #[error("the geometry has more than {max} positions; simplify it before import")]
    TooManyVertices {
        /// The limit, [`MAX_VERTICES`].
        max: usize,
    },
    /// A ring with fewer than 4 positions (a triangle plus its closing position).
    #[error(
        "{at}: a ring needs at least 4 positions (the last repeating the first), found {count}"
    )]
    TooFewPositions {
        /// Which ring.
        at: Location,
        /// How many positions it has.
        count: usize,
    },
    /// A ring whose last position differs from its first.
    #[error("{at}: ring is not closed (first {} ≠ last {})", Pt(*.first), Pt(*.last))]
    NotClosed {
        /// Which ring.
        at: Location,
        /// Its first position.
        first: Position,
        /// Its last position.
        last: Position,
    },
    /// A ring whose positions all lie on one line (or repeat one point).
    #[error("{at}: ring encloses no area (its positions lie on one line)")]
    ZeroArea {
        /// Which ring.
        at: Location,
    },
    /// A ring that crosses or touches itself.
    #[error("{at}: ring intersects itself: {first} meets {second}")]
    SelfIntersection {
        /// Which ring.
        at: Location,
        /// One of the two edges that meet (boxed to keep the error small).
        first: Box<Edge>,
        /// The other edge.
        second: Box<Edge>,
    },
    /// A polygon whose holes are as large as its exterior.
    #[error("{at}: the holes cover the whole exterior; the polygon encloses no area")]
    EmptyPolygon {
        /// Which polygon.
        at: Location,
    },
}

/// Parses and validates a hazard-area geometry.
///
/// Accepts a GeoJSON `Polygon` or `MultiPolygon` geometry object, or a `Feature` whose
/// `geometry` is one (its properties are ignored). See the module documentation for the checks.
pub fn parse_area_geometry(json: &str) -> Result<Geometry, GeoError> {
    let value: Value = serde_json::from_str(json).map_err(|source| GeoError::InvalidJson {
        line: source.line(),
        column: source.column(),
        source,
    })?;
    geometry_from_value(&value, true)
}

impl Geometry {
    /// Whether the geometry is a `Polygon` or a `MultiPolygon`.
    pub fn kind(&self) -> GeometryKind {
        self.kind
    }

    /// The polygons; each is a list of rings, exterior first, each ring closed (last = first).
    pub fn polygons(&self) -> &[Vec<Vec<Position>>] {
        &self.polygons
    }

    /// Every ring of every polygon, exteriors and holes, in GeoJSON order; each ring is closed.
    ///
    /// Drawing all of them as one path with the even-odd fill rule renders the holes.
    pub fn rings(&self) -> impl Iterator<Item = &[Position]> + '_ {
        self.polygons.iter().flatten().map(Vec::as_slice)
    }

    /// Number of positions, closing positions included.
    pub fn vertex_count(&self) -> usize {
        self.rings().map(<[Position]>::len).sum()
    }

    /// Area in square metres on the WGS84 sphere approximation; holes are subtracted.
    pub fn area_m2(&self) -> f64 {
        self.polygons.iter().map(|p| polygon_area_m2(p)).sum()
    }

    /// Bounding box `[min_lon, min_lat, max_lon, max_lat]` in degrees.
    pub fn bbox(&self) -> [f64; 4] {
        let mut bbox = [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ];
        for p in self.rings().flatten() {
            bbox[0] = bbox[0].min(p[0]);
            bbox[1] = bbox[1].min(p[1]);
            bbox[2] = bbox[2].max(p[0]);
            bbox[3] = bbox[3].max(p[1]);
        }
        bbox
    }

    /// Centroid `(lon, lat)` of the area in degrees, computed in the plane of the coordinates
    /// (holes subtracted). Good enough for a label or a map marker; it may fall outside a
    /// strongly concave shape.
    pub fn centroid(&self) -> (f64, f64) {
        let bbox = self.bbox();
        // Coordinates relative to a nearby origin keep the shoelace sums accurate.
        let origin = [bbox[0], bbox[1]];
        let (mut sum_a, mut sum_x, mut sum_y) = (0.0, 0.0, 0.0);
        for polygon in &self.polygons {
            for (index, ring) in polygon.iter().enumerate() {
                let (a, cx, cy) = planar_ring_moments(ring, origin);
                // Exteriors count positively and holes negatively, whatever their winding.
                let weight = if index == 0 { a.abs() } else { -a.abs() };
                if a != 0.0 {
                    sum_a += weight;
                    sum_x += weight * cx;
                    sum_y += weight * cy;
                }
            }
        }
        if sum_a.abs() > 0.0 {
            (origin[0] + sum_x / sum_a, origin[1] + sum_y / sum_a)
        } else {
            ((bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0)
        }
    }

    /// The geometry as a GeoJSON geometry object (`Polygon` or `MultiPolygon`, without
    /// altitudes). Parsing the result gives back an equal geometry.
    pub fn to_geojson_string(&self) -> String {
        let polygon_value = |polygon: &Vec<Vec<Position>>| {
            Value::Array(
                polygon
                    .iter()
                    .map(|ring| {
                        Value::Array(
                            ring.iter()
                                .map(|p| Value::Array(vec![Value::from(p[0]), Value::from(p[1])]))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        };
        let (kind, coordinates) = match (self.kind, self.polygons.as_slice()) {
            (GeometryKind::Polygon, [polygon]) => ("Polygon", polygon_value(polygon)),
            (_, polygons) => (
                "MultiPolygon",
                Value::Array(polygons.iter().map(polygon_value).collect()),
            ),
        };
        let mut object = serde_json::Map::new();
        object.insert("type".to_owned(), Value::from(kind));
        object.insert("coordinates".to_owned(), coordinates);
        Value::Object(object).to_string()
    }
}

/// A GeoJSON `Polygon` string: a square (in metres) of about `area_m2` centred on
/// (`center_lon`, `center_lat`), counter-clockwise as RFC 7946 recommends. Used to generate
/// demo data.
///
/// The result always passes [`parse_area_geometry`], and its [`Geometry::area_m2`] equals
/// `area_m2` to rounding: the east–west extent is solved for the area on the sphere. Inputs are
/// clamped so that it can: `area_m2` into [1 m², 10⁶ km²], the latitude into [-80, 80], the
/// longitude so the square does not cross the antimeridian; non-finite inputs become 0 (1 m²
/// for the area).
pub fn square_polygon(center_lon: f64, center_lat: f64, area_m2: f64) -> String {
    let area = if area_m2.is_finite() {
        area_m2.clamp(SQUARE_MIN_M2, SQUARE_MAX_M2)
    } else {
        SQUARE_MIN_M2
    };
    let lat = if center_lat.is_finite() {
        center_lat.clamp(-80.0, 80.0)
    } else {
        0.0
    };
    let half_side = area.sqrt() / 2.0;
    let half_dlat = (half_side / EARTH_RADIUS_M).to_degrees();
    let (south, north) = (lat - half_dlat, lat + half_dlat);
    // Area of a latitude band slice on the sphere: R² · Δλ · (sin φn − sin φs).
    let band = north.to_radians().sin() - south.to_radians().sin();
    let half_dlon = (area / (EARTH_RADIUS_M * EARTH_RADIUS_M * band)).to_degrees() / 2.0;
    let lon = if center_lon.is_finite() {
        center_lon.clamp(-180.0 + half_dlon, 180.0 - half_dlon)
    } else {
        0.0
    };
    let (west, east) = (lon - half_dlon, lon + half_dlon);
    let geometry = Geometry {
        kind: GeometryKind::Polygon,
        polygons: vec![vec![vec![
            [west, south],
            [east, south],
            [east, north],
            [west, north],
            [west, south],
        ]]],
    };
    geometry.to_geojson_string()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn geometry_from_value(value: &Value, allow_feature: bool) -> Result<Geometry, GeoError> {
    let Value::Object(object) = value else {
        return Err(GeoError::NotGeoJson {
            found: json_kind(value),
        });
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => {
            return Err(GeoError::NotGeoJson {
                found: "an object whose \"type\" is not a string",
            })
        }
        None => {
            return Err(GeoError::NotGeoJson {
                found: "an object without \"type\"",
            })
        }
    };
    let coordinates = || match object.get("coordinates") {
        Some(Value::Array(items)) => Ok(items),
        other => Err(GeoError::Malformed {
            at: Location::default(),
            expected: "a \"coordinates\" array",
            found: other.map_or("nothing", json_kind),
        }),
    };
    let mut budget = MAX_VERTICES;
    match kind {
        "Feature" if allow_feature => match object.get("geometry") {
            None | Some(Value::Null) => Err(GeoError::MissingGeometry),
            Some(geometry) => geometry_from_value(geometry, false),
        },
        "Polygon" => Ok(Geometry {
            kind: GeometryKind::Polygon,
            polygons: vec![parse_polygon(coordinates()?, 0, &mut budget)?],
        }),
        "MultiPolygon" => {
            let items = coordinates()?;
            if items.is_empty() {
                return Err(GeoError::NoPolygons);
            }
            let mut polygons = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let Value::Array(rings) = item else {
                    return Err(GeoError::Malformed {
                        at: Location::polygon(index),
                        expected: "an array of rings",
                        found: json_kind(item),
                    });
                };
                polygons.push(parse_polygon(rings, index, &mut budget)?);
            }
            Ok(Geometry {
                kind: GeometryKind::MultiPolygon,
                polygons,
            })
        }
        other => Err(GeoError::UnsupportedType {
            found: other.chars().take(40).collect(),
        }),
    }
}

/// Parses and checks one polygon; `budget` is the number of positions still allowed.
fn parse_polygon(
    rings: &[Value],
    polygon: usize,
    budget: &mut usize,
) -> Result<Vec<Vec<Position>>, GeoError> {
    if rings.is_empty() {
        return Err(GeoError::NoRings { polygon });
    }
    let mut parsed = Vec::with_capacity(rings.len());
    for (ring_index, ring) in rings.iter().enumerate() {
        let at = Location::ring(polygon, ring_index);
        let Value::Array(positions) = ring else {
            return Err(GeoError::Malformed {
                at,
                expected: "an array of positions",
                found: json_kind(ring),
            });
        };
        // Before any per-position work, so a huge input is refused cheaply.
        *budget = budget
            .checked_sub(positions.len())
            .ok_or(GeoError::TooManyVertices { max: MAX_VERTICES })?;
        let ring = positions
            .iter()
            .enumerate()
            .map(|(i, p)| parse_position(p, Location::position(polygon, ring_index, i)))
            .collect::<Result<Vec<_>, _>>()?;
        check_ring(&ring, at)?;
        parsed.push(ring);
    }
    let exterior = parsed.first().map_or(0.0, |ring| ring_area_m2(ring).abs());
    // Relative, because the spherical formula leaves rounding noise proportional to the size.
    if polygon_area_m2(&parsed) <= exterior * 1e-9 {
        return Err(GeoError::EmptyPolygon {
            at: Location::polygon(polygon),
        });
    }
    Ok(parsed)
}

fn parse_position(value: &Value, at: Location) -> Result<Position, GeoError> {
    let Value::Array(items) = value else {
        return Err(GeoError::BadPosition {
            at,
            found: json_kind(value).to_owned(),
        });
    };
    if !(2..=3).contains(&items.len()) {
        return Err(GeoError::BadPosition {
            at,
            found: format!("{} values", items.len()),
        });
    }
    let mut coordinates = [0.0; 3];
    for (index, (item, slot)) in items.iter().zip(coordinates.iter_mut()).enumerate() {
        let Some(number) = item.as_f64() else {
            return Err(GeoError::BadPosition {
                at,
                found: format!("{} at index {index}", json_kind(item)),
            });
        };
        if !number.is_finite() {
            return Err(GeoError::NonFinite { at, index });
        }
        *slot = number;
    }
    let [lon, lat, _] = coordinates;
    if !(-180.0..=180.0).contains(&lon) {
        return Err(GeoError::LongitudeOutOfRange { at, value: lon });
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(GeoError::LatitudeOutOfRange { at, value: lat });
    }
    Ok([lon, lat])
}

fn check_ring(ring: &[Position], at: Location) -> Result<(), GeoError> {
    let (Some(first), Some(last)) = (ring.first(), ring.last()) else {
        return Err(GeoError::TooFewPositions { at, count: 0 });
    };
    if ring.len() < 4 {
        return Err(GeoError::TooFewPositions {
            at,
            count: ring.len(),
        });
    }
    if first != last {
        return Err(GeoError::NotClosed {
            at,
            first: *first,
            last: *last,
        });
    }
    if is_degenerate(ring) {
        return Err(GeoError::ZeroArea { at });
    }
    if let Some((first, second)) = self_intersection(ring) {
        return Err(GeoError::SelfIntersection {
            at,
            first: Box::new(first),
            second: Box::new(second),
        });
    }
    Ok(())
}

/// True when all positions of the ring lie on one line (up to rounding), so it encloses no area.
///
/// Collinearity rather than a zero signed area: a symmetric bow-tie also sums to zero, and must
/// be reported as the self-intersection it is.
fn is_degenerate(ring: &[Position]) -> bool {
    let Some(&origin) = ring.first() else {
        return true;
    };
    let distance2 = |p: &Position| (p[0] - origin[0]).powi(2) + (p[1] - origin[1]).powi(2);
    let Some(&far) = ring
        .iter()
        .max_by(|a, b| distance2(a).total_cmp(&distance2(b)))
    else {
        return true;
    };
    let scale2 = distance2(&far);
    // Rounding in `orient` is ~1e-16 of scale²; a real ring is far above 1e-12 of it
    // (a 1 m × 100 km sliver is 1e-5).
    scale2 == 0.0
        || ring
            .iter()
            .all(|&p| orient(origin, far, p).abs() <= 1e-12 * scale2)
}

/// Signed planar area (shoelace, degrees²) and centroid of a closed ring, relative to `origin`.
fn planar_ring_moments(ring: &[Position], origin: Position) -> (f64, f64, f64) {
    let (mut twice_area, mut cx, mut cy) = (0.0, 0.0, 0.0);
    for pair in ring.windows(2) {
        let (x0, y0) = (pair[0][0] - origin[0], pair[0][1] - origin[1]);
        let (x1, y1) = (pair[1][0] - origin[0], pair[1][1] - origin[1]);
        let cross = x0 * y1 - x1 * y0;
        twice_area += cross;
        cx += (x0 + x1) * cross;
        cy += (y0 + y1) * cross;
    }
    if twice_area == 0.0 {
        return (0.0, 0.0, 0.0);
    }
    (
        twice_area / 2.0,
        cx / (3.0 * twice_area),
        cy / (3.0 * twice_area),
    )
}

/// Signed area of a closed ring on the sphere, in m² (turf's `ringArea`).
fn ring_area_m2(ring: &[Position]) -> f64 {
    // The closing position repeats the first; the formula walks the distinct ones cyclically.
    let n = ring.len().saturating_sub(1);
    if n < 3 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..n {
        let lower = ring[i];
        let middle = ring[(i + 1) % n];
        let upper = ring[(i + 2) % n];
        total += (upper[0].to_radians() - lower[0].to_radians()) * middle[1].to_radians().sin();
    }
    total * EARTH_RADIUS_M * EARTH_RADIUS_M / 2.0
}

fn polygon_area_m2(rings: &[Vec<Position>]) -> f64 {
    let mut rings = rings.iter().map(|ring| ring_area_m2(ring).abs());
    let exterior = rings.next().unwrap_or(0.0);
    exterior - rings.sum::<f64>()
}

fn orient(a: Position, b: Position, c: Position) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

/// For `p` collinear with `a`–`b`: whether it lies on the segment.
fn on_segment(a: Position, b: Position, p: Position) -> bool {
    p[0] >= a[0].min(b[0])
        && p[0] <= a[0].max(b[0])
        && p[1] >= a[1].min(b[1])
        && p[1] <= a[1].max(b[1])
}

/// Whether the closed segments `p1`–`p2` and `p3`–`p4` share at least one point.
fn segments_meet(p1: Position, p2: Position, p3: Position, p4: Position) -> bool {
    let d1 = orient(p3, p4, p1);
    let d2 = orient(p3, p4, p2);
    let d3 = orient(p1, p2, p3);
    let d4 = orient(p1, p2, p4);
    let opposite = |a: f64, b: f64| (a > 0.0 && b < 0.0) || (a < 0.0 && b > 0.0);
    if opposite(d1, d2) && opposite(d3, d4) {
        return true;
    }
    (d1 == 0.0 && on_segment(p3, p4, p1))
        || (d2 == 0.0 && on_segment(p3, p4, p2))
        || (d3 == 0.0 && on_segment(p1, p2, p3))
        || (d4 == 0.0 && on_segment(p1, p2, p4))
}

/// For consecutive edges `prev`→`shared`→`next`: whether the second doubles back over the first
/// (a spike), the only way two edges that share an endpoint can overlap.
fn doubles_back(prev: Position, shared: Position, next: Position) -> bool {
    let incoming = [shared[0] - prev[0], shared[1] - prev[1]];
    let outgoing = [next[0] - shared[0], next[1] - shared[1]];
    let cross = incoming[0] * outgoing[1] - incoming[1] * outgoing[0];
    let dot = incoming[0] * outgoing[0] + incoming[1] * outgoing[1];
    cross == 0.0 && dot < 0.0
}

/// Finds two edges of a closed ring that cross, touch or overlap, other than consecutive edges
/// meeting at their shared position. Repeated consecutive positions are ignored.
///
/// A sweep over edges sorted by their west end keeps the usual cost near O(n log n); the worst
/// case stays O(n²), bounded by [`MAX_VERTICES`].
fn self_intersection(ring: &[Position]) -> Option<(Edge, Edge)> {
    // (original index, position), without repeated consecutive positions.
    let mut points: Vec<(usize, Position)> = Vec::with_capacity(ring.len());
    for (index, p) in ring.iter().enumerate() {
        if points.last().is_none_or(|(_, q)| q != p) {
            points.push((index, *p));
        }
    }
    let edges: Vec<Edge> = points
        .windows(2)
        .map(|w| Edge {
            from: w[0].0,
            to: w[1].0,
            start: w[0].1,
            end: w[1].1,
        })
        .collect();
    let m = edges.len();
    if m < 3 {
        return None;
    }
    let west = |e: &Edge| e.start[0].min(e.end[0]);
    let east = |e: &Edge| e.start[0].max(e.end[0]);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| west(&edges[a]).total_cmp(&west(&edges[b])));
    for (k, &a) in order.iter().enumerate() {
        let ea = &edges[a];
        let a_east = east(ea);
        let (a_south, a_north) = (ea.start[1].min(ea.end[1]), ea.start[1].max(ea.end[1]));
        for &b in order.iter().skip(k + 1) {
            let eb = &edges[b];
            if west(eb) > a_east {
                break;
            }
            if eb.start[1].max(eb.end[1]) < a_south || eb.start[1].min(eb.end[1]) > a_north {
                continue;
            }
            let (i, j) = (a.min(b), a.max(b));
            let (ei, ej) = (&edges[i], &edges[j]);
            let meet = if j == i + 1 {
                doubles_back(ei.start, ei.end, ej.end)
            } else if i == 0 && j == m - 1 {
                doubles_back(ej.start, ej.end, ei.end)
            } else {
                segments_meet(ei.start, ei.end, ej.start, ej.end)
            };
            if meet {
                return Some((*ei, *ej));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = r#"{"type":"Polygon","coordinates":[
        [[18.40,43.80],[18.45,43.80],[18.45,43.85],[18.40,43.85],[18.40,43.80]],
        [[18.41,43.81],[18.41,43.82],[18.42,43.82],[18.42,43.81],[18.41,43.81]]]}"#;

    fn polygon(rings: &[&[[f64; 2]]]) -> String {
        let rings: Vec<Vec<[f64; 2]>> = rings.iter().map(|r| r.to_vec()).collect();
        serde_json::json!({"type": "Polygon", "coordinates": rings}).to_string()
    }

    fn err(json: &str) -> GeoError {
        parse_area_geometry(json).expect_err("should be refused")
    }

    /// Metres per degree on the WGS84 ellipsoid (independent of the sphere used by the code).
    fn metres_per_degree(lat: f64) -> (f64, f64) {
        let phi = lat.to_radians();
        let per_lat = 111_132.92 - 559.82 * (2.0 * phi).cos() + 1.175 * (4.0 * phi).cos();
        let per_lon = 111_412.84 * phi.cos() - 93.5 * (3.0 * phi).cos();
        (per_lon, per_lat)
    }

    #[test]
    fn valid_polygon_with_hole() {
        let g = parse_area_geometry(VALID).expect("valid");
        assert_eq!(g.kind(), GeometryKind::Polygon);
        assert_eq!(g.polygons().len(), 1);
        assert_eq!(g.rings().count(), 2);
        assert_eq!(g.vertex_count(), 10);
        assert_eq!(g.bbox(), [18.40, 43.80, 18.45, 43.85]);
        let outer_only = parse_area_geometry(&polygon(&[&[
            [18.40, 43.80],
            [18.45, 43.80],
            [18.45, 43.85],
            [18.40, 43.85],
            [18.40, 43.80],
        ]]))
        .expect("valid");
        // The hole is 1/25 of the exterior.
        let ratio = g.area_m2() / outer_only.area_m2();
        assert!((ratio - 0.96).abs() < 1e-3, "{ratio}");
    }

    #[test]
    fn feature_multipolygon_and_altitude_are_accepted() {
        let feature = format!(r#"{{"type":"Feature","properties":{{"id":7}},"geometry":{VALID}}}"#);
        let g = parse_area_geometry(&feature).expect("feature");
        assert_eq!(g, parse_area_geometry(VALID).expect("valid"));

        let multi = r#"{"type":"MultiPolygon","coordinates":[
            [[[0,0],[1,0],[1,1],[0,0]]],
            [[[2,0,100],[3,0,100],[3,1,100],[2,0,100]]]]}"#;
        let g = parse_area_geometry(multi).expect("multi");
        assert_eq!(g.kind(), GeometryKind::MultiPolygon);
        assert_eq!(g.polygons().len(), 2);
        assert_eq!(g.rings().nth(1).and_then(|r| r.first()), Some(&[2.0, 0.0]));
    }

    #[test]
    fn open_ring_says_where_and_how() {
        let json = polygon(&[
            &[
                [18.0, 43.0],
                [19.0, 43.0],
                [19.0, 44.0],
                [18.0, 44.0],
                [18.0, 43.0],
            ],
            &[[18.4, 43.8], [18.45, 43.8], [18.45, 43.85], [18.5, 43.9]],
        ]);
        let e = err(&json);
        assert!(matches!(e, GeoError::NotClosed { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "polygon 0, ring 1: ring is not closed (first [18.4, 43.8] ≠ last [18.5, 43.9])"
        );
    }

    #[test]
    fn too_few_positions() {
        let e = err(&polygon(&[&[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]));
        assert!(
            matches!(e, GeoError::TooFewPositions { count: 3, .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("polygon 0, ring 0: "), "{e}");
        let e = err(r#"{"type":"Polygon","coordinates":[[]]}"#);
        assert!(
            matches!(e, GeoError::TooFewPositions { count: 0, .. }),
            "{e:?}"
        );
        assert!(matches!(
            err(r#"{"type":"Polygon","coordinates":[]}"#),
            GeoError::NoRings { polygon: 0 }
        ));
        assert!(matches!(
            err(r#"{"type":"MultiPolygon","coordinates":[]}"#),
            GeoError::NoPolygons
        ));
    }

    #[test]
    fn out_of_range_coordinates() {
        let e = err(&polygon(&[&[
            [0.0, 0.0],
            [181.0, 0.0],
            [1.0, 1.0],
            [0.0, 0.0],
        ]]));
        assert!(matches!(e, GeoError::LongitudeOutOfRange { value, .. } if value == 181.0));
        assert_eq!(
            e.to_string(),
            "polygon 0, ring 0, position 1: longitude 181 is outside [-180, 180]"
        );
        // Swapped order, a common mistake: [lat, lon] for a place in Laos.
        let e = err(&polygon(&[&[
            [15.0, 105.0],
            [15.1, 105.0],
            [15.1, 105.1],
            [15.0, 105.0],
        ]]));
        assert!(matches!(e, GeoError::LatitudeOutOfRange { value, .. } if value == 105.0));
        assert!(e.to_string().contains("[longitude, latitude]"), "{e}");
        // The limits themselves are valid.
        parse_area_geometry(&polygon(&[&[
            [-180.0, -90.0],
            [180.0, -90.0],
            [180.0, 90.0],
            [-180.0, -90.0],
        ]]))
        .expect("extreme but valid");
    }

    #[test]
    fn bow_tie_is_a_self_intersection() {
        let e = err(&polygon(&[&[
            [0.0, 0.0],
            [1.0, 1.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [0.0, 0.0],
        ]]));
        let GeoError::SelfIntersection { first, second, .. } = &e else {
            panic!("expected a self-intersection, got {e:?}");
        };
        assert_eq!((first.from, first.to, second.from, second.to), (0, 1, 2, 3));
        assert_eq!(
            e.to_string(),
            "polygon 0, ring 0: ring intersects itself: the edge from position 0 [0, 0] to \
             position 1 [1, 1] meets the edge from position 2 [1, 0] to position 3 [0, 1]"
        );
    }

    #[test]
    fn touching_and_doubling_back_are_self_intersections() {
        // Figure eight through a shared vertex.
        let e = err(&polygon(&[&[
            [0.0, 0.0],
            [1.0, 1.0],
            [2.0, 0.0],
            [2.0, 2.0],
            [1.0, 1.0],
            [0.0, 2.0],
            [0.0, 0.0],
        ]]));
        assert!(matches!(e, GeoError::SelfIntersection { .. }), "{e:?}");
        // A spike: the ring goes out along an edge and comes straight back.
        let e = err(&polygon(&[&[
            [0.0, 0.0],
            [2.0, 0.0],
            [3.0, 0.0],
            [2.5, 0.0],
            [2.0, 2.0],
            [0.0, 2.0],
            [0.0, 0.0],
        ]]));
        assert!(matches!(e, GeoError::SelfIntersection { .. }), "{e:?}");
        // Repeated consecutive positions and collinear vertices are fine.
        parse_area_geometry(&polygon(&[&[
            [0.0, 0.0],
            [1.0, 0.0],
            [1.0, 0.0],
            [2.0, 0.0],
            [2.0, 2.0],
            [0.0, 2.0],
            [0.0, 0.0],
        ]]))
        .expect("valid");
    }

    #[test]
    fn zero_area_rings_are_refused() {
        let e = err(&polygon(&[&[
            [0.0, 0.0],
            [1.0, 1.0],
            [2.0, 2.0],
            [0.0, 0.0],
        ]]));
        assert!(matches!(e, GeoError::ZeroArea { .. }), "{e:?}");
        let e = err(&polygon(&[&[
            [5.0, 5.0],
            [5.0, 5.0],
            [5.0, 5.0],
            [5.0, 5.0],
        ]]));
        assert!(matches!(e, GeoError::ZeroArea { .. }), "{e:?}");
        let e = err(&polygon(&[&[
            [0.1, 0.1],
            [0.2, 0.2],
            [0.3, 0.3],
            [0.1, 0.1],
        ]]));
        assert!(matches!(e, GeoError::ZeroArea { .. }), "{e:?}");
        // A hole equal to the exterior leaves nothing.
        let ring: &[[f64; 2]] = &[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]];
        let e = err(&polygon(&[ring, ring]));
        assert!(matches!(e, GeoError::EmptyPolygon { .. }), "{e:?}");
    }

    #[test]
    fn nan_like_and_non_numeric_inputs_are_refused() {
        let wrap = |pos: &str| {
            format!(r#"{{"type":"Polygon","coordinates":[[[0,0],{pos},[1,1],[0,0]]]}}"#)
        };
        for pos in [
            "[NaN,0]",
            "[Infinity,0]",
            "[-Infinity,0]",
            "[1e400,0]",
            "[0,-1e999]",
        ] {
            let e = err(&wrap(pos));
            assert!(
                matches!(e, GeoError::InvalidJson { .. } | GeoError::NonFinite { .. }),
                "{pos}: {e:?}"
            );
        }
        for pos in [
            r#"["NaN",0]"#,
            r#"["18.4","43.8"]"#,
            "[null,0]",
            "[true,0]",
            "[[1],0]",
        ] {
            let e = err(&wrap(pos));
            assert!(matches!(e, GeoError::BadPosition { .. }), "{pos}: {e:?}");
            assert!(
                e.to_string().starts_with("polygon 0, ring 0, position 1: "),
                "{e}"
            );
        }
        for pos in [
            "[1]",
            "[1,2,3,4]",
            "[]",
            "7",
            "null",
            r#"{"lon":1,"lat":2}"#,
        ] {
            let e = err(&wrap(pos));
            assert!(matches!(e, GeoError::BadPosition { .. }), "{pos}: {e:?}");
        }
    }

    #[test]
    fn wrong_documents_are_refused() {
        let e = err("{\"type\": \"Polygon\",\n \"coordinates\": [[[0,0],[1,0]");
        assert!(matches!(e, GeoError::InvalidJson { line: 2, .. }), "{e:?}");
        assert!(matches!(err(""), GeoError::InvalidJson { .. }));
        assert!(matches!(
            err("[1,2]"),
            GeoError::NotGeoJson { found: "an array" }
        ));
        assert!(matches!(
            err(r#"{"coordinates":[]}"#),
            GeoError::NotGeoJson { .. }
        ));
        let e = err(r#"{"type":"Point","coordinates":[18.4,43.8]}"#);
        assert_eq!(
            e.to_string(),
            "expected a Polygon or MultiPolygon geometry (or a Feature wrapping one), found \"Point\""
        );
        assert!(matches!(
            err(r#"{"type":"FeatureCollection","features":[]}"#),
            GeoError::UnsupportedType { .. }
        ));
        assert!(matches!(
            err(r#"{"type":"Feature","geometry":null}"#),
            GeoError::MissingGeometry
        ));
        let nested =
            format!(r#"{{"type":"Feature","geometry":{{"type":"Feature","geometry":{VALID}}}}}"#);
        assert!(matches!(err(&nested), GeoError::UnsupportedType { .. }));
        assert!(matches!(
            err(r#"{"type":"Polygon"}"#),
            GeoError::Malformed { .. }
        ));
        let e = err(r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]], 5]}"#);
        assert_eq!(
            e.to_string(),
            "polygon 1: expected an array of rings, found a number"
        );
    }

    #[test]
    fn more_than_max_vertices_is_refused() {
        let n = MAX_VERTICES; // + the closing position = MAX_VERTICES + 1
        let mut ring: Vec<[f64; 2]> = (0..n)
            .map(|i| {
                let t = i as f64 / n as f64 * std::f64::consts::TAU;
                [18.4 + 0.01 * t.cos(), 43.8 + 0.01 * t.sin()]
            })
            .collect();
        ring.push(ring[0]);
        let e = err(&polygon(&[&ring]));
        assert!(
            matches!(e, GeoError::TooManyVertices { max: MAX_VERTICES }),
            "{e:?}"
        );
        assert!(e.to_string().contains("10000"), "{e}");
        // At the limit it is accepted, and checked in reasonable time.
        ring.remove(n - 1);
        ring.remove(n - 2);
        let g = parse_area_geometry(&polygon(&[&ring])).expect("at the limit");
        assert_eq!(g.vertex_count(), MAX_VERTICES - 1);
    }

    #[test]
    fn one_km_square_near_sarajevo() {
        let (lon, lat) = (18.4131, 43.8563);
        let (per_lon, per_lat) = metres_per_degree(lat);
        let (dx, dy) = (1000.0 / per_lon, 1000.0 / per_lat);
        let json = polygon(&[&[
            [lon, lat],
            [lon + dx, lat],
            [lon + dx, lat + dy],
            [lon, lat + dy],
            [lon, lat],
        ]]);
        let area = parse_area_geometry(&json).expect("valid").area_m2();
        assert!((area - 1.0e6).abs() < 1.0e4, "{area}");
    }

    #[test]
    fn square_polygon_round_trips_with_its_area() {
        for (lon, lat, area) in [
            (18.4131, 43.8563, 1.0e6),
            (106.0, 16.5, 25_000.0),
            (-75.0, 4.0, 3.5e7),
            (179.99, -79.0, 1.0e9),
            (0.0, 0.0, 1.0),
        ] {
            let g = parse_area_geometry(&square_polygon(lon, lat, area)).expect("valid");
            let got = g.area_m2();
            assert!(
                (got - area).abs() <= area * 0.01,
                "{lon} {lat} {area}: {got}"
            );
            let (cx, cy) = g.centroid();
            assert!((cy - lat).abs() < 1.0, "{cy}");
            if lon.abs() < 179.0 {
                assert!((cx - lon).abs() < 1e-6, "{cx}");
            }
        }
        // Out-of-domain inputs still give a valid polygon.
        for (lon, lat, area) in [
            (f64::NAN, f64::INFINITY, f64::NAN),
            (500.0, -95.0, -3.0),
            (180.0, 90.0, 1.0e20),
        ] {
            parse_area_geometry(&square_polygon(lon, lat, area)).expect("clamped");
        }
    }

    #[test]
    fn bbox_centroid_and_geojson_round_trip() {
        let g = parse_area_geometry(VALID).expect("valid");
        let (cx, cy) = g.centroid();
        assert!(
            cx > 18.42 && cx < 18.43 && cy > 43.82 && cy < 43.83,
            "{cx} {cy}"
        );
        let text = g.to_geojson_string();
        assert!(text.contains(r#""type":"Polygon""#), "{text}");
        assert_eq!(parse_area_geometry(&text).expect("round trip"), g);
        let multi = r#"{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]]]}"#;
        let g = parse_area_geometry(multi).expect("multi");
        assert_eq!(g.bbox(), [0.0, 0.0, 1.0, 1.0]);
        assert!(g.to_geojson_string().contains("MultiPolygon"));
        assert_eq!(
            parse_area_geometry(&g.to_geojson_string()).expect("round trip"),
            g
        );
    }

    fn coordinate() -> impl Strategy<Value = f64> {
        prop_oneof![
            -200.0..200.0f64,
            -1.0..1.0f64,
            any::<f64>(),
            Just(0.0),
            Just(180.0),
            Just(-90.0),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_strings(text in ".{0,300}") {
            let _ = parse_area_geometry(&text);
        }

        #[test]
        fn parse_never_panics_on_json_like_strings(
            text in r#"[\[\]{}",:0-9.eE+ \-]{0,40}|\{"type":"(Multi)?Polygon","coordinates":[\[\]0-9.,\- ]{0,80}\}"#
        ) {
            let _ = parse_area_geometry(&text);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_coordinates(
            polygons in prop::collection::vec(
                prop::collection::vec(
                    (prop::collection::vec((coordinate(), coordinate(), prop::option::of(coordinate())), 0..10), any::<bool>()),
                    0..3),
                0..3),
            multi in any::<bool>(),
        ) {
            let number = |x: f64| format!("{x}");
            let polygons: Vec<String> = polygons.iter().map(|rings| {
                let rings: Vec<String> = rings.iter().map(|(positions, close)| {
                    let mut items: Vec<String> = positions.iter().map(|(lon, lat, alt)| match alt {
                        Some(alt) => format!("[{},{},{}]", number(*lon), number(*lat), number(*alt)),
                        None => format!("[{},{}]", number(*lon), number(*lat)),
                    }).collect();
                    if *close {
                        if let Some(first) = items.first().cloned() {
                            items.push(first);
                        }
                    }
                    format!("[{}]", items.join(","))
                }).collect();
                format!("[{}]", rings.join(","))
            }).collect();
            let json = if multi {
                format!(r#"{{"type":"MultiPolygon","coordinates":[{}]}}"#, polygons.join(","))
            } else {
                format!(r#"{{"type":"Polygon","coordinates":{}}}"#, polygons.first().map_or("[]", String::as_str))
            };
            if let Ok(g) = parse_area_geometry(&json) {
                let area = g.area_m2();
                prop_assert!(area.is_finite() && area > 0.0, "{}", area);
                let [w, s, e, n] = g.bbox();
                prop_assert!((-180.0..=180.0).contains(&w) && w <= e && e <= 180.0);
                prop_assert!((-90.0..=90.0).contains(&s) && s <= n && n <= 90.0);
                prop_assert_eq!(parse_area_geometry(&g.to_geojson_string()).ok(), Some(g));
            }
        }
    }
}
