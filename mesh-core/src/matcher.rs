//! String, header, path and query-parameter matchers (xDS `StringMatcher`, `HeaderMatcher`,
//! `RouteMatch.path_specifier`, `QueryParameterMatcher`) with Envoy's semantics.

use regex::{Regex, RegexBuilder};

use crate::error::{FieldError, FieldResult};
use crate::request::RouteRequest;

/// Compiled regexes are capped so that one resource cannot take unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles an RE2-style pattern that must match the whole input.
pub(crate) fn full_match_regex(pattern: &str, field: &str) -> FieldResult<Regex> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let detail = e.to_string().replace('\n', " ");
            FieldError::new(field, format!("invalid regex {pattern:?}: {detail}"))
        })
}

/// The pattern of a [`StringMatcherSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    /// The whole value equals this string.
    Exact(String),
    /// The value starts with this (non-empty) string.
    Prefix(String),
    /// The value ends with this (non-empty) string.
    Suffix(String),
    /// The value contains this (non-empty) string.
    Contains(String),
    /// The whole value matches this RE2 regex.
    Regex(String),
}

/// An unvalidated xDS `StringMatcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcherSpec {
    /// What to compare with.
    pub pattern: StringPattern,
    /// Compare ASCII case-insensitively (not applied to regexes, as in Envoy).
    pub ignore_case: bool,
}

impl StringMatcherSpec {
    /// An exact, case-sensitive matcher.
    pub fn exact(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Exact(s.into()),
            ignore_case: false,
        }
    }
    /// A case-sensitive prefix matcher.
    pub fn prefix(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Prefix(s.into()),
            ignore_case: false,
        }
    }
    /// A case-sensitive suffix matcher.
    pub fn suffix(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Suffix(s.into()),
            ignore_case: false,
        }
    }
    /// A case-sensitive substring matcher.
    pub fn contains(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Contains(s.into()),
            ignore_case: false,
        }
    }
    /// A full-match regex matcher.
    pub fn regex(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Regex(s.into()),
            ignore_case: false,
        }
    }
    /// The same matcher, comparing ASCII case-insensitively.
    pub fn ignoring_case(mut self) -> Self {
        self.ignore_case = true;
        self
    }
}

/// A validated string matcher.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    kind: StringKind,
}

#[derive(Debug, Clone)]
enum StringKind {
    Exact(Box<str>, bool),
    Prefix(Box<str>, bool),
    Suffix(Box<str>, bool),
    Contains(Box<str>, bool),
    Regex(Regex),
}

impl StringMatcher {
    /// Validates a spec: affixes must be non-empty and regexes must compile.
    pub fn new(spec: &StringMatcherSpec) -> Result<Self, FieldError> {
        let ic = spec.ignore_case;
        let fold = |s: &str| -> Box<str> {
            if ic {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        };
        let non_empty = |s: &str, what: &str| {
            if s.is_empty() {
                Err(FieldError::new(what, "must not be empty"))
            } else {
                Ok(())
            }
        };
        let kind = match &spec.pattern {
            StringPattern::Exact(s) => StringKind::Exact(fold(s), ic),
            StringPattern::Prefix(s) => {
                non_empty(s, "prefix")?;
                StringKind::Prefix(fold(s), ic)
            }
            StringPattern::Suffix(s) => {
                non_empty(s, "suffix")?;
                StringKind::Suffix(fold(s), ic)
            }
            StringPattern::Contains(s) => {
                non_empty(s, "contains")?;
                StringKind::Contains(fold(s), ic)
            }
            StringPattern::Regex(s) => StringKind::Regex(full_match_regex(s, "safe_regex")?),
        };
        Ok(Self { kind })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.kind {
            StringKind::Exact(p, false) => value == &**p,
            StringKind::Exact(p, true) => value.eq_ignore_ascii_case(p),
            StringKind::Prefix(p, ic) => starts_with(value, p, *ic),
            StringKind::Suffix(p, ic) => ends_with(value, p, *ic),
            StringKind::Contains(p, false) => value.contains(&**p),
            StringKind::Contains(p, true) => value.to_ascii_lowercase().contains(&**p),
            StringKind::Regex(r) => r.is_match(value),
        }
    }
}

/// `value` starts with `prefix`; with `ignore_case`, `prefix` is already lowercase.
#[inline]
pub(crate) fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    let (v, p) = (value.as_bytes(), prefix.as_bytes());
    v.len() >= p.len()
        && if ignore_case {
            v[..p.len()].eq_ignore_ascii_case(p)
        } else {
            &v[..p.len()] == p
        }
}

#[inline]
fn ends_with(value: &str, suffix: &str, ignore_case: bool) -> bool {
    let (v, s) = (value.as_bytes(), suffix.as_bytes());
    v.len() >= s.len()
        && if ignore_case {
            v[v.len() - s.len()..].eq_ignore_ascii_case(s)
        } else {
            &v[v.len() - s.len()..] == s
        }
}

/// What an xDS `HeaderMatcher` tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatchSpec {
    /// `present_match`: the header is present (`true`) or absent (`false`).
    Present(bool),
    /// `range_match`: the value parses as an `i64` in `[start, end)`.
    Range {
        /// Inclusive start.
        start: i64,
        /// Exclusive end.
        end: i64,
    },
    /// `exact_match`, `prefix_match`, `suffix_match`, `contains_match`, `safe_regex_match` or
    /// `string_match`.
    String(StringMatcherSpec),
}

/// An unvalidated xDS `HeaderMatcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcherSpec {
    /// Header name; pseudo-headers `:method`, `:authority`, `:path`, `:scheme` are allowed.
    pub name: String,
    /// What to test.
    pub matcher: HeaderMatchSpec,
    /// `invert_match`.
    pub invert: bool,
    /// `treat_missing_header_as_empty`: a missing header is matched as `""`.
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcherSpec {
    /// A matcher on `name` with `matcher`, not inverted.
    pub fn new(name: impl Into<String>, matcher: HeaderMatchSpec) -> Self {
        Self {
            name: name.into(),
            matcher,
            invert: false,
            treat_missing_as_empty: false,
        }
    }
}

/// A validated header matcher.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    name: Box<str>,
    kind: HeaderKind,
    invert: bool,
    treat_missing_as_empty: bool,
}

#[derive(Debug, Clone)]
enum HeaderKind {
    Present(bool),
    Range(i64, i64),
    String(StringMatcher),
}

const PSEUDO_HEADERS: [&str; 4] = [":method", ":authority", ":path", ":scheme"];

impl HeaderMatcher {
    /// Validates a spec: the name must be a valid header name or a known pseudo-header.
    pub fn new(spec: &HeaderMatcherSpec) -> Result<Self, FieldError> {
        let name = spec.name.to_ascii_lowercase();
        if name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if name.starts_with(':') {
            if !PSEUDO_HEADERS.contains(&name.as_str()) {
                return Err(FieldError::new(
                    "name",
                    format!("unsupported pseudo-header {name:?} (supported: {PSEUDO_HEADERS:?})"),
                ));
            }
        } else if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(FieldError::new(
                "name",
                format!("{name:?} is not a valid header name"),
            ));
        }
        let kind = match &spec.matcher {
            HeaderMatchSpec::Present(p) => HeaderKind::Present(*p),
            HeaderMatchSpec::Range { start, end } => HeaderKind::Range(*start, *end),
            HeaderMatchSpec::String(s) => {
                HeaderKind::String(StringMatcher::new(s).map_err(|e| e.within("string_match"))?)
            }
        };
        Ok(Self {
            name: name.into(),
            kind,
            invert: spec.invert,
            treat_missing_as_empty: spec.treat_missing_as_empty,
        })
    }

    /// The lowercase header name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the request matches, as Envoy decides it: a missing header (unless treated as
    /// empty) matches only `present: false`, or `present: true` inverted.
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        match req.header(&self.name) {
            None if !self.treat_missing_as_empty => {
                matches!(self.kind, HeaderKind::Present(p) if p == self.invert)
            }
            value => {
                let value = value.as_deref().unwrap_or("");
                let hit = match &self.kind {
                    HeaderKind::Present(p) => *p,
                    HeaderKind::Range(start, end) => value
                        .parse::<i64>()
                        .is_ok_and(|v| *start <= v && v < *end),
                    HeaderKind::String(m) => m.matches(value),
                };
                hit != self.invert
            }
        }
    }
}

/// An unvalidated xDS `QueryParameterMatcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParamMatcherSpec {
    /// Parameter name.
    pub name: String,
    /// How to match the value; `None` means `present_match`.
    pub value: Option<StringMatcherSpec>,
}

/// A validated query-parameter matcher.
#[derive(Debug, Clone)]
pub struct QueryParamMatcher {
    name: Box<str>,
    value: Option<StringMatcher>,
}

impl QueryParamMatcher {
    /// Validates a spec: the name must be non-empty.
    pub fn new(spec: &QueryParamMatcherSpec) -> Result<Self, FieldError> {
        if spec.name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let value = spec
            .value
            .as_ref()
            .map(StringMatcher::new)
            .transpose()
            .map_err(|e| e.within("string_match"))?;
        Ok(Self {
            name: spec.name.as_str().into(),
            value,
        })
    }

    /// Whether the request's query string matches (values are compared undecoded).
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        match (req.query_param(&self.name), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        }
    }
}

/// An unvalidated `RouteMatch.path_specifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatchSpec {
    /// The path starts with this string; `""` and `"/"` match every path.
    Prefix(String),
    /// The path equals this string.
    Exact(String),
    /// The whole path matches this RE2 regex.
    Regex(String),
    /// The path equals this string or continues it with `/` (Envoy `path_separated_prefix`).
    PathSeparatedPrefix(String),
}

/// A validated path matcher.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    kind: PathKind,
    ignore_case: bool,
}

#[derive(Debug, Clone)]
enum PathKind {
    Prefix(Box<str>),
    Exact(Box<str>),
    Regex(Regex),
    Separated(Box<str>),
}

impl PathMatcher {
    /// Validates a path specifier; `case_sensitive: false` applies to all but regexes.
    pub fn new(spec: &PathMatchSpec, case_sensitive: bool) -> Result<Self, FieldError> {
        let fold = |s: &str| -> Box<str> {
            if case_sensitive {
                s.into()
            } else {
                s.to_ascii_lowercase().into()
            }
        };
        let kind = match spec {
            PathMatchSpec::Prefix(p) => PathKind::Prefix(fold(p)),
            PathMatchSpec::Exact(p) => PathKind::Exact(fold(p)),
            PathMatchSpec::Regex(r) => PathKind::Regex(full_match_regex(r, "safe_regex")?),
            PathMatchSpec::PathSeparatedPrefix(p) => {
                if !p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#']) {
                    return Err(FieldError::new(
                        "path_separated_prefix",
                        format!(
                            "{p:?} must start with '/', must not end with '/' and must not contain '?' or '#'"
                        ),
                    ));
                }
                PathKind::Separated(fold(p))
            }
        };
        Ok(Self {
            kind,
            ignore_case: !case_sensitive,
        })
    }

    /// Whether `path` (without its query string) matches.
    pub fn matches(&self, path: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            PathKind::Prefix(p) => starts_with(path, p, ic),
            PathKind::Exact(p) => {
                if ic {
                    path.eq_ignore_ascii_case(p)
                } else {
                    path == &**p
                }
            }
            PathKind::Regex(r) => r.is_match(path),
            PathKind::Separated(p) => {
                starts_with(path, p, ic)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        }
    }
}
