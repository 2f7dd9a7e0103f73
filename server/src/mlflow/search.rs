//! MLflow's search filters and page tokens, for `registered-models/search`
//! and `model-versions/search`.
//!
//! A filter is clauses joined by `AND`: `name = 'fraud'`,
//! `name LIKE 'fraud%'` (`ILIKE` ignores case), `name != 'x'`,
//! `run_id = 'abc'`, `run_id IN ('a', 'b')`, `tags.team = 'risk'` (or
//! `tag.team`; a key with other characters in backticks: ``tags.`my key` =
//! 'v'``; a model without the tag passes only `!=`). Values are
//! quoted with `'` or `"`. Anything else is refused, naming what is
//! supported. Page tokens are offsets into the filtered, ordered list, bound
//! to the filter and order they were issued for.

use std::collections::BTreeMap;

use super::Refusal;

/// What a clause compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Name,
    RunId,
    Tag(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Like { ignore_case: bool },
    In,
}

/// One `key op value` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    key: Key,
    op: Op,
    values: Vec<String>,
}

/// What a clause is checked against.
pub struct Subject<'a> {
    pub name: &'a str,
    pub run_id: Option<&'a str>,
    pub tags: &'a BTreeMap<String, String>,
}

/// A parsed filter: every clause must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    clauses: Vec<Clause>,
}

impl Filter {
    /// Parses `raw`; `versions` allows `run_id` clauses.
    pub fn parse(raw: &str, versions: bool) -> Result<Filter, Refusal> {
        let supported = if versions {
            "name = 'x', name LIKE 'x%', run_id = 'x', run_id IN ('x', 'y'), tags.KEY = 'v', joined by AND"
        } else {
            "name = 'x', name LIKE 'x%', name ILIKE 'x%', tags.KEY = 'v', joined by AND"
        };
        let bad = |why: String| {
            Refusal::invalid(format!(
                "invalid filter {:?}: {why}; supported: {supported}",
                crate::domain::truncate(raw, 200)
            ))
        };
        let tokens = tokenize(raw).map_err(bad)?;
        let mut clauses = Vec::new();
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            let (clause, after) = clause(rest, versions).map_err(bad)?;
            clauses.push(clause);
            rest = match after {
                [] => after,
                [Token::Word(w), more @ ..]
                    if w.eq_ignore_ascii_case("and") && !more.is_empty() =>
                {
                    more
                }
                [t, ..] => return Err(bad(format!("expected AND, found {}", t.show()))),
            };
        }
        Ok(Filter { clauses })
    }

    /// Whether `s` passes every clause.
    pub fn admits(&self, s: &Subject) -> bool {
        self.clauses.iter().all(|c| {
            let value = match &c.key {
                Key::Name => Some(s.name),
                Key::RunId => s.run_id,
                Key::Tag(k) => s.tags.get(k).map(String::as_str),
            };
            let Some(value) = value else {
                // Without the tag only `!=` holds: MLflow's client leaves out
                // prompts with `tag.`mlflow.prompt.is_prompt` != 'true'`.
                return c.op == Op::Ne;
            };
            match &c.op {
                Op::Eq => value == c.values[0],
                Op::Ne => value != c.values[0],
                Op::In => c.values.iter().any(|v| v == value),
                Op::Like { ignore_case } => like(&c.values[0], value, *ignore_case),
            }
        })
    }

    /// The model a filter pins down with `name = 'x'`, if any.
    pub fn exact_name(&self) -> Option<&str> {
        self.clauses
            .iter()
            .find(|c| c.key == Key::Name && c.op == Op::Eq)
            .map(|c| c.values[0].as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Symbol(&'static str),
}

impl Token {
    fn show(&self) -> String {
        match self {
            Token::Word(w) => format!("{w:?}"),
            Token::Quoted(q) => format!("'{q}'"),
            Token::Symbol(s) => format!("{s:?}"),
        }
    }
}

fn tokenize(raw: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = raw.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '\'' | '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(x) => s.push(x),
                        None => return Err(format!("a value opened with {c} is not closed")),
                    }
                }
                out.push(Token::Quoted(s));
            }
            '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some(x) => s.push(x),
                        None => return Err("a name opened with ` is not closed".into()),
                    }
                }
                // Joins `tags.` (or `tag.`) and the quoted key into one word.
                match out.last_mut() {
                    Some(Token::Word(w)) if w.ends_with('.') => w.push_str(&s),
                    _ => out.push(Token::Word(s)),
                }
            }
            '=' => {
                chars.next();
                out.push(Token::Symbol("="));
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err("! must be followed by =".into());
                }
                out.push(Token::Symbol("!="));
            }
            '(' | ')' | ',' => {
                chars.next();
                out.push(Token::Symbol(match c {
                    '(' => "(",
                    ')' => ")",
                    _ => ",",
                }));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' => {
                let mut w = String::new();
                while let Some(&x) = chars.peek() {
                    if x.is_alphanumeric() || x == '_' || x == '.' || x == '-' {
                        w.push(x);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Word(w));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

fn clause(tokens: &[Token], versions: bool) -> Result<(Clause, &[Token]), String> {
    let Some((Token::Word(field), rest)) = tokens.split_first() else {
        return Err(format!(
            "expected a field name, found {}",
            tokens.first().map_or("the end".into(), Token::show)
        ));
    };
    let key = match field.to_ascii_lowercase().as_str() {
        "name" => Key::Name,
        "run_id" if versions => Key::RunId,
        lower if lower.starts_with("tags.") && field.len() > 5 => Key::Tag(field[5..].to_owned()),
        lower if lower.starts_with("tag.") && field.len() > 4 => Key::Tag(field[4..].to_owned()),
        _ => return Err(format!("{field:?} cannot be searched")),
    };
    let (op, rest) = match rest {
        [Token::Symbol("="), rest @ ..] => (Op::Eq, rest),
        [Token::Symbol("!="), rest @ ..] => (Op::Ne, rest),
        [Token::Word(w), rest @ ..] if w.eq_ignore_ascii_case("like") => {
            (Op::Like { ignore_case: false }, rest)
        }
        [Token::Word(w), rest @ ..] if w.eq_ignore_ascii_case("ilike") => {
            (Op::Like { ignore_case: true }, rest)
        }
        [Token::Word(w), rest @ ..] if w.eq_ignore_ascii_case("in") => (Op::In, rest),
        [t, ..] => return Err(format!("unsupported comparison {} after {field}", t.show())),
        [] => return Err(format!("{field} is not compared with anything")),
    };
    if op == Op::In {
        let mut values = Vec::new();
        let mut rest = match rest {
            [Token::Symbol("("), rest @ ..] => rest,
            _ => return Err("IN must be followed by a list like ('a', 'b')".into()),
        };
        loop {
            match rest {
                [Token::Quoted(v), Token::Symbol(","), more @ ..] => {
                    values.push(v.clone());
                    rest = more;
                }
                [Token::Quoted(v), Token::Symbol(")"), more @ ..] => {
                    values.push(v.clone());
                    return Ok((Clause { key, op, values }, more));
                }
                _ => return Err("IN must be followed by a list like ('a', 'b')".into()),
            }
        }
    }
    match rest {
        [Token::Quoted(v), rest @ ..] => Ok((
            Clause {
                key,
                op,
                values: vec![v.clone()],
            },
            rest,
        )),
        [t, ..] => Err(format!(
            "expected a quoted value after {field}, found {}",
            t.show()
        )),
        [] => Err(format!("{field} is compared with nothing")),
    }
}

/// SQL's LIKE: `%` any run of characters, `_` any one character.
fn like(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, v) = (fold(pattern), fold(value));
    // Classic two-pointer wildcard match with backtracking to the last `%`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < v.len() {
        if i < p.len() && (p[i] == '_' || p[i] == v[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '%' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '%')
}

/// What a result is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderKey {
    Name,
    Version,
    Created,
    Updated,
}

/// The sort keys of one result.
pub struct Sortable<'a> {
    pub name: &'a str,
    pub version: i64,
    pub created: i64,
    pub updated: i64,
}

/// An `order_by` list: `name`, `creation_timestamp`,
/// `last_updated_timestamp` (and, for versions, `version_number`), each
/// with an optional `ASC` or `DESC`. Ties fall back on name ascending, then
/// version descending.
#[derive(Debug, Clone)]
pub struct Order(Vec<(OrderKey, bool)>);

impl Order {
    /// Parses `raw`, or takes `default` when it is empty.
    pub fn parse(raw: &[String], default: &[&str], versions: bool) -> Result<Order, Refusal> {
        let items: Vec<String> = if raw.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            raw.to_vec()
        };
        let mut keys = Vec::new();
        for item in &items {
            let mut words = item.split_whitespace();
            let field = words.next().unwrap_or("");
            let key = match field {
                "name" => OrderKey::Name,
                "version_number" if versions => OrderKey::Version,
                "creation_timestamp" => OrderKey::Created,
                "last_updated_timestamp" | "timestamp" => OrderKey::Updated,
                _ => None.ok_or_else(|| {
                    Refusal::invalid(format!(
                        "cannot order by {:?}: use name, creation_timestamp, last_updated_timestamp{}, with ASC or DESC",
                        crate::domain::truncate(item, 64),
                        if versions { ", version_number" } else { "" }
                    ))
                })?,
            };
            let ascending = match words.next().map(str::to_ascii_uppercase).as_deref() {
                None | Some("ASC") => true,
                Some("DESC") => false,
                Some(other) => {
                    return Err(Refusal::invalid(format!(
                        "order_by {item:?}: {other:?} is neither ASC nor DESC"
                    )));
                }
            };
            if words.next().is_some() {
                return Err(Refusal::invalid(format!(
                    "order_by {item:?} must be a field and ASC or DESC"
                )));
            }
            keys.push((key, ascending));
        }
        keys.push((OrderKey::Name, true));
        keys.push((OrderKey::Version, false));
        Ok(Order(keys))
    }

    /// Compares two results by the order's keys.
    pub fn compare(&self, a: &Sortable, b: &Sortable) -> std::cmp::Ordering {
        for (key, ascending) in &self.0 {
            let o = match key {
                OrderKey::Name => a.name.cmp(b.name),
                OrderKey::Version => a.version.cmp(&b.version),
                OrderKey::Created => a.created.cmp(&b.created),
                OrderKey::Updated => a.updated.cmp(&b.updated),
            };
            let o = if *ascending { o } else { o.reverse() };
            if o.is_ne() {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    }
}

/// Page tokens: an offset, bound to the query it pages.
pub fn decode_token(token: Option<&str>, query: &str) -> Result<usize, Refusal> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let bind = binding(query);
    token
        .split_once('.')
        .filter(|(_, b)| *b == bind)
        .and_then(|(offset, _)| offset.parse().ok())
        .ok_or_else(|| {
            Refusal::invalid(
                "page_token is not one this server issued for this filter and order; \
                 start again without it",
            )
        })
}

/// The token of the page that starts at `offset`.
pub fn encode_token(offset: usize, query: &str) -> String {
    format!("{offset}.{}", binding(query))
}

fn binding(query: &str) -> String {
    crate::domain::audit::sha256_hex(query.as_bytes())[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(name: &'a str, run: &'a str, tags: &'a BTreeMap<String, String>) -> Subject<'a> {
        Subject {
            name,
            run_id: Some(run),
            tags,
        }
    }

    #[test]
    fn filters_match_like_mlflow() {
        let tags = BTreeMap::from([("team".to_owned(), "risk".to_owned())]);
        let s = subject("fraud-detector", "r1", &tags);
        let ok = |f: &str| Filter::parse(f, true).unwrap().admits(&s);
        assert!(ok(""));
        assert!(ok("name = 'fraud-detector'"));
        assert!(ok("name LIKE 'fraud%'"));
        assert!(!ok("name LIKE 'Fraud%'"));
        assert!(ok("name ILIKE 'FRAUD%'"));
        assert!(ok("name LIKE 'fraud_detector'"));
        assert!(ok("tags.team = 'risk' AND run_id = \"r1\""));
        assert!(ok("tags.`team` = 'risk'"));
        assert!(ok("tags.owner != 'x'"));
        assert!(!ok("tags.owner = 'x'"));
        assert!(ok("tag.`mlflow.prompt.is_prompt` != 'true'"));
        assert!(ok("run_id IN ('r0', 'r1')"));
        assert!(!ok("run_id IN ('r0')"));
        assert!(ok("name != 'other'"));
    }

    #[test]
    fn bad_filters_are_refused_by_name() {
        for f in [
            "name = fraud",
            "name =",
            "stage = 'x'",
            "name = 'a' OR name = 'b'",
            "name = 'a' AND",
            "name = 'unclosed",
            "name ~ 'a'",
        ] {
            let e = Filter::parse(f, true).unwrap_err();
            assert_eq!(e.code, "INVALID_PARAMETER_VALUE", "{f}");
            assert!(e.message.contains("supported"), "{f}: {}", e.message);
        }
        // run_id is a version's field only.
        assert!(Filter::parse("run_id = 'r'", false).is_err());
    }

    #[test]
    fn tokens_are_bound_to_their_query() {
        let t = encode_token(50, "q1");
        assert_eq!(decode_token(Some(&t), "q1").unwrap(), 50);
        assert!(decode_token(Some(&t), "q2").is_err());
        assert!(decode_token(Some("garbage"), "q1").is_err());
        assert_eq!(decode_token(None, "q1").unwrap(), 0);
    }
}
