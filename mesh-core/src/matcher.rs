//! String, header, path and query-parameter matchers (xDS `StringMatcher`, `HeaderMatcher`,
//! `RouteMatch.path_specifier`, `QueryParameterMatcher`) with Envoy's semantics.

use regex::{Regex, RegexBuilder};
use std::borrow::Cow;

use crate::error::{FieldError, FieldResult};
use crate::request::RouteRequest;

/// The size classes a compiled regex is fitted into: its program and its match cache each
/// stay within the class, and the class is what it is charged against its resource's budget.
const REGEX_SIZE_CLASSES: [usize; 4] = [16 << 10, 64 << 10, 256 << 10, 1 << 20];

/// What the regexes of one resource may take together, counted by size class (programs and
/// match caches alike are within it): 16 MiB, e.g. 1,024 simple regexes or 16 of the largest.
pub const REGEX_BUDGET_PER_RESOURCE: usize = 16 << 20;

thread_local! {
    /// The budget left for the resource being validated. Validation is synchronous and
    /// nested (a listener's inline route configuration), so the budget is kept here rather
    /// than threaded through every validator.
    static REGEX_BUDGET: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` (a resource's validation) with a fresh regex budget, unless one is running
/// already (the resource contains the one being validated).
pub(crate) fn with_regex_budget<T>(f: impl FnOnce() -> T) -> T {
    let outer = REGEX_BUDGET.with(|b| b.get());
    if outer.is_some() {
        return f();
    }
    /// Ends the budget however `f` ends (a caught panic included).
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REGEX_BUDGET.with(|b| b.set(None));
        }
    }
    REGEX_BUDGET.with(|b| b.set(Some(REGEX_BUDGET_PER_RESOURCE)));
    let _reset = Reset;
    f()
}

/// Compiles `pattern` (`shown` in errors) in the smallest size class it fits, charging the
/// running resource's budget.
pub(crate) fn bounded_regex(pattern: &str, shown: &str, field: &str) -> FieldResult<Regex> {
    let invalid = |detail: String| {
        FieldError::new(
            field,
            format!("invalid regex {shown:?}: {}", detail.replace('\n', " ")),
        )
    };
    for class in REGEX_SIZE_CLASSES {
        match RegexBuilder::new(pattern)
            .size_limit(class)
            .dfa_size_limit(class)
            .build()
        {
            Ok(re) => {
                let left = REGEX_BUDGET.with(|b| b.get());
                if let Some(left) = left {
                    let Some(rest) = left.checked_sub(class) else {
                        return Err(FieldError::new(
                            field,
                            format!(
                                "regex {shown:?} is over the budget: the regexes of one resource may take {} MiB together",
                                REGEX_BUDGET_PER_RESOURCE >> 20
                            ),
                        ));
                    };
                    REGEX_BUDGET.with(|b| b.set(Some(rest)));
                }
                return Ok(re);
            }
            Err(regex::Error::CompiledTooBig(_)) => {}
            Err(e) => return Err(invalid(e.to_string())),
        }
    }
    Err(invalid(format!(
        "compiles to more than {} KiB",
        REGEX_SIZE_CLASSES[REGEX_SIZE_CLASSES.len() - 1] >> 10
    )))
}

/// Compiles an RE2-style pattern that must match the whole input.
/// `L` when `pattern` is `.*L.*` and `L` has no regex syntax in it.
fn around_literal(pattern: &str) -> Option<&str> {
    let lit = pattern.strip_prefix(".*")?.strip_suffix(".*")?;
    let meta = |c: char| "\\.+*?()|[]{}^$#&-~".contains(c) || c.is_whitespace();
    (!lit.is_empty() && !lit.chars().any(meta)).then_some(lit)
}

pub(crate) fn full_match_regex(pattern: &str, field: &str) -> FieldResult<Regex> {
    bounded_regex(&format!("^(?:{pattern})$"), pattern, field)
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
#[derive(Debug, Clone, PartialEq)]
pub struct StringMatcher {
    kind: StringKind,
}

impl PartialEq for StringKind {
    fn eq(&self, other: &Self) -> bool {
        use StringKind::*;
        match (self, other) {
            (Exact(a, x), Exact(b, y))
            | (Prefix(a, x), Prefix(b, y))
            | (Suffix(a, x), Suffix(b, y))
            | (Contains(a, x), Contains(b, y)) => a == b && x == y,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (AroundLiteral(a), AroundLiteral(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
enum StringKind {
    Exact(Box<str>, bool),
    Prefix(Box<str>, bool),
    Suffix(Box<str>, bool),
    Contains(Box<str>, bool),
    Regex(Regex),
    /// A regex `.*LITERAL.*`, as Istio writes namespace rules: a full match is "contains
    /// LITERAL, and no newline" (`.` does not match one), without running the regex.
    AroundLiteral(Box<str>),
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
            StringPattern::Regex(s) => {
                let regex = full_match_regex(s, "safe_regex")?;
                // Compiled either way: to validate it and to charge the regex budget.
                match around_literal(s) {
                    Some(lit) => StringKind::AroundLiteral(lit.into()),
                    None => StringKind::Regex(regex),
                }
            }
        };
        Ok(Self { kind })
    }

    /// The pattern and its `ignore_case` flag when this is an exact matcher.
    pub fn exact(&self) -> Option<(&str, bool)> {
        match &self.kind {
            StringKind::Exact(p, ic) => Some((p, *ic)),
            _ => None,
        }
    }

    /// The pattern and its `ignore_case` flag when this is a prefix matcher.
    pub fn prefix(&self) -> Option<(&str, bool)> {
        match &self.kind {
            StringKind::Prefix(p, ic) => Some((p, *ic)),
            _ => None,
        }
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
            StringKind::AroundLiteral(lit) => value.contains(&**lit) && !value.contains('\n'),
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
    /// Where the value comes from, resolved once.
    source: HeaderSource,
    kind: HeaderKind,
    invert: bool,
    treat_missing_as_empty: bool,
}

/// A pseudo-header, or a regular header by parsed name.
#[derive(Debug, Clone)]
enum HeaderSource {
    Method,
    Authority,
    Path,
    Scheme,
    Header(http::HeaderName),
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
        let source = match name.as_str() {
            ":method" => HeaderSource::Method,
            ":authority" => HeaderSource::Authority,
            ":path" => HeaderSource::Path,
            ":scheme" => HeaderSource::Scheme,
            n if n.starts_with(':') => {
                return Err(FieldError::new(
                    "name",
                    format!("unsupported pseudo-header {name:?} (supported: {PSEUDO_HEADERS:?})"),
                ));
            }
            n => {
                HeaderSource::Header(http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    FieldError::new("name", format!("{name:?} is not a valid header name"))
                })?)
            }
        };
        let kind = match &spec.matcher {
            HeaderMatchSpec::Present(p) => HeaderKind::Present(*p),
            HeaderMatchSpec::Range { start, end } => HeaderKind::Range(*start, *end),
            HeaderMatchSpec::String(s) => {
                HeaderKind::String(StringMatcher::new(s).map_err(|e| e.within("string_match"))?)
            }
        };
        Ok(Self {
            name: name.into(),
            source,
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
        let value = match &self.source {
            HeaderSource::Header(h) => req.header_value(h),
            HeaderSource::Method => Some(Cow::Borrowed(req.method().as_str())),
            HeaderSource::Authority => Some(Cow::Borrowed(req.authority())),
            HeaderSource::Path => Some(Cow::Borrowed(req.path())),
            HeaderSource::Scheme => req.header(":scheme"),
        };
        match value {
            None if !self.treat_missing_as_empty => {
                matches!(self.kind, HeaderKind::Present(p) if p == self.invert)
            }
            value => {
                let value = value.as_deref().unwrap_or("");
                let hit = match &self.kind {
                    HeaderKind::Present(p) => *p,
                    HeaderKind::Range(start, end) => {
                        value.parse::<i64>().is_ok_and(|v| *start <= v && v < *end)
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method, Uri};
    use proptest::prelude::*;

    fn req_with<'a>(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> RouteRequest<'a> {
        RouteRequest::new(method, uri, headers)
    }

    fn header(name: &str, m: HeaderMatchSpec, invert: bool) -> HeaderMatcher {
        HeaderMatcher::new(&HeaderMatcherSpec {
            invert,
            ..HeaderMatcherSpec::new(name, m)
        })
        .unwrap()
    }

    proptest! {
        /// Istio's `.*LITERAL.*` regexes, answered without the regex, answer as the regex does.
        #[test]
        fn around_literal_regexes_answer_as_the_regex(value in "[a-z/\n:.]{0,24}", lit in "[a-z/]{1,6}") {
            let pattern = format!(".*{lit}.*");
            let fast = StringMatcher::new(&StringMatcherSpec::regex(&pattern)).unwrap();
            assert!(matches!(fast.kind, StringKind::AroundLiteral(_)));
            let slow = full_match_regex(&pattern, "r").unwrap();
            prop_assert_eq!(fast.matches(&value), slow.is_match(&value));
        }
    }

    #[test]
    fn string_matchers() {
        let m = |s: StringMatcherSpec| StringMatcher::new(&s).unwrap();
        assert!(m(StringMatcherSpec::exact("abc")).matches("abc"));
        assert!(!m(StringMatcherSpec::exact("abc")).matches("ABC"));
        assert!(m(StringMatcherSpec::exact("abc").ignoring_case()).matches("AbC"));
        assert!(m(StringMatcherSpec::prefix("/api").ignoring_case()).matches("/API/v1"));
        assert!(m(StringMatcherSpec::suffix(".com")).matches("a.com"));
        assert!(!m(StringMatcherSpec::suffix(".com")).matches("com"));
        assert!(m(StringMatcherSpec::contains("ell").ignoring_case()).matches("HELLO"));
        // Regexes must match the whole value, and ignore_case does not apply to them.
        assert!(m(StringMatcherSpec::regex("v[0-9]+")).matches("v12"));
        assert!(!m(StringMatcherSpec::regex("v[0-9]+")).matches("xv12"));
        assert!(!m(StringMatcherSpec::regex("v[0-9]+").ignoring_case()).matches("V12"));
        assert!(m(StringMatcherSpec::regex("a|b")).matches("b"));
    }

    #[test]
    fn invalid_string_matchers_name_the_field() {
        let e = StringMatcher::new(&StringMatcherSpec::prefix("")).unwrap_err();
        assert_eq!(e, FieldError::new("prefix", "must not be empty"));
        let e = StringMatcher::new(&StringMatcherSpec::regex("(a")).unwrap_err();
        assert_eq!(e.field, "safe_regex");
        assert!(
            e.reason.starts_with("invalid regex \"(a\": "),
            "{}",
            e.reason
        );
        let e = HeaderMatcher::new(&HeaderMatcherSpec::new(
            ":status",
            HeaderMatchSpec::Present(true),
        ))
        .unwrap_err();
        assert_eq!(e.field, "name");
        assert!(
            e.reason
                .starts_with("unsupported pseudo-header \":status\"")
        );
        let e = HeaderMatcher::new(&HeaderMatcherSpec::new(
            "bad header",
            HeaderMatchSpec::Present(true),
        ))
        .unwrap_err();
        assert_eq!(e.reason, "\"bad header\" is not a valid header name");
    }

    #[test]
    fn header_matchers_follow_envoy_on_missing_headers() {
        let (m, u) = (Method::GET, Uri::from_static("http://svc:80/p"));
        let empty = HeaderMap::new();
        let r = req_with(&m, &u, &empty);
        // A missing header matches only present:false, or present:true inverted.
        assert!(header("x", HeaderMatchSpec::Present(false), false).matches(&r));
        assert!(!header("x", HeaderMatchSpec::Present(true), false).matches(&r));
        assert!(header("x", HeaderMatchSpec::Present(true), true).matches(&r));
        assert!(!header("x", HeaderMatchSpec::Present(false), true).matches(&r));
        let exact = HeaderMatchSpec::String(StringMatcherSpec::exact("v"));
        assert!(!header("x", exact.clone(), false).matches(&r));
        assert!(!header("x", exact.clone(), true).matches(&r));
        // Treated as empty, the inverted exact match succeeds.
        let spec = HeaderMatcherSpec {
            invert: true,
            treat_missing_as_empty: true,
            ..HeaderMatcherSpec::new("x", exact)
        };
        assert!(HeaderMatcher::new(&spec).unwrap().matches(&r));
    }

    #[test]
    fn header_values_join_ignore_bin_and_see_pseudo_headers() {
        let (m, u) = (Method::POST, Uri::from_static("http://Svc:80/p?q=1"));
        let mut h = HeaderMap::new();
        h.append("x-v", HeaderValue::from_static("a"));
        h.append("x-v", HeaderValue::from_static("b"));
        h.insert("x-id-bin", HeaderValue::from_static("AAAA"));
        h.insert("x-n", HeaderValue::from_static("42"));
        let r = req_with(&m, &u, &h);
        let s = |v: &str| HeaderMatchSpec::String(StringMatcherSpec::exact(v));
        assert!(header("x-v", s("a,b"), false).matches(&r));
        assert!(header("x-id-bin", HeaderMatchSpec::Present(false), false).matches(&r));
        assert!(header(":method", s("POST"), false).matches(&r));
        assert!(header(":authority", s("Svc:80"), false).matches(&r));
        assert!(header(":path", s("/p"), false).matches(&r));
        let range = |start, end| HeaderMatchSpec::Range { start, end };
        assert!(header("x-n", range(40, 43), false).matches(&r));
        assert!(!header("x-n", range(0, 42), false).matches(&r));
        assert!(header("x-n", range(0, 42), true).matches(&r));
        assert!(!header("x-v", range(0, 42), false).matches(&r));
    }

    #[test]
    fn path_matchers() {
        let p = |s: PathMatchSpec, cs| PathMatcher::new(&s, cs).unwrap();
        assert!(p(PathMatchSpec::Prefix("".into()), true).matches("/anything"));
        assert!(p(PathMatchSpec::Prefix("/Orders".into()), false).matches("/orders/1"));
        assert!(!p(PathMatchSpec::Prefix("/Orders".into()), true).matches("/orders/1"));
        assert!(p(PathMatchSpec::Exact("/a".into()), true).matches("/a"));
        assert!(!p(PathMatchSpec::Exact("/a".into()), true).matches("/a/"));
        let sep = p(PathMatchSpec::PathSeparatedPrefix("/api".into()), true);
        assert!(sep.matches("/api") && sep.matches("/api/x"));
        assert!(!sep.matches("/apix"));
        assert!(p(PathMatchSpec::Regex("/u/[0-9]+".into()), true).matches("/u/7"));
        let e = PathMatcher::new(&PathMatchSpec::PathSeparatedPrefix("/api/".into()), true)
            .unwrap_err();
        assert_eq!(e.field, "path_separated_prefix");
    }

    #[test]
    fn query_params() {
        let (m, u, h) = (
            Method::GET,
            Uri::from_static("/p?a=1&b&c=xyz"),
            HeaderMap::new(),
        );
        let r = req_with(&m, &u, &h);
        let q = |name: &str, value: Option<StringMatcherSpec>| {
            QueryParamMatcher::new(&QueryParamMatcherSpec {
                name: name.into(),
                value,
            })
            .unwrap()
        };
        assert!(q("a", Some(StringMatcherSpec::exact("1"))).matches(&r));
        assert!(q("b", None).matches(&r));
        assert!(q("c", Some(StringMatcherSpec::prefix("xy"))).matches(&r));
        assert!(!q("d", None).matches(&r));
        assert!(!q("a", Some(StringMatcherSpec::exact("2"))).matches(&r));
    }

    /// A straightforward reference: lowercase both sides with `to_ascii_lowercase`.
    fn reference(pattern: &StringPattern, ignore_case: bool, value: &str) -> bool {
        let fold = |s: &str| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        let v = fold(value);
        match pattern {
            StringPattern::Exact(p) => v == fold(p),
            StringPattern::Prefix(p) => v.starts_with(&fold(p)),
            StringPattern::Suffix(p) => v.ends_with(&fold(p)),
            StringPattern::Contains(p) => v.contains(&fold(p)),
            StringPattern::Regex(_) => unreachable!(),
        }
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(128))]

        #[test]
        fn string_matchers_agree_with_reference(
            kind in 0..4u8,
            pattern in "[a-cA-C/]{1,4}",
            value in "[a-cA-C/]{0,8}",
            ignore_case: bool,
        ) {
            let pattern = match kind {
                0 => StringPattern::Exact(pattern),
                1 => StringPattern::Prefix(pattern),
                2 => StringPattern::Suffix(pattern),
                _ => StringPattern::Contains(pattern),
            };
            let spec = StringMatcherSpec { pattern: pattern.clone(), ignore_case };
            let m = StringMatcher::new(&spec).unwrap();
            prop_assert_eq!(m.matches(&value), reference(&pattern, ignore_case, &value));
        }

        #[test]
        fn path_matchers_agree_with_reference(
            prefix in "(/[a-cA-C]{1,3}){1,2}",
            path in "(/[a-cA-C]{0,3}){0,3}",
            case_sensitive: bool,
        ) {
            let fold = |s: &str| if case_sensitive { s.to_string() } else { s.to_ascii_lowercase() };
            let (fp, fpath) = (fold(&prefix), fold(&path));
            let m = PathMatcher::new(&PathMatchSpec::Prefix(prefix.clone()), case_sensitive).unwrap();
            prop_assert_eq!(m.matches(&path), fpath.starts_with(&fp));
            let m = PathMatcher::new(&PathMatchSpec::Exact(prefix.clone()), case_sensitive).unwrap();
            prop_assert_eq!(m.matches(&path), fpath == fp);
            let m = PathMatcher::new(&PathMatchSpec::PathSeparatedPrefix(prefix.clone()), case_sensitive).unwrap();
            let segments_ref = fpath == fp || fpath.starts_with(&format!("{fp}/"));
            prop_assert_eq!(m.matches(&path), segments_ref);
        }

        #[test]
        fn header_matchers_agree_with_reference(
            value in proptest::option::of("[a-c0-9]{0,4}"),
            pattern in "[a-c0-9]{1,2}",
            invert: bool,
        ) {
            let (m, u) = (Method::GET, Uri::from_static("/"));
            let mut h = HeaderMap::new();
            if let Some(v) = &value {
                h.insert("x-k", HeaderValue::from_str(v).unwrap());
            }
            let r = req_with(&m, &u, &h);
            let hm = header("x-k", HeaderMatchSpec::String(StringMatcherSpec::prefix(pattern.clone())), invert);
            let expected = match &value {
                None => false,
                Some(v) => v.starts_with(&pattern) != invert,
            };
            prop_assert_eq!(hm.matches(&r), expected);
        }
    }
}
