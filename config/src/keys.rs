//! What a TOML error is about: the key path at the error's position (`server.listn`,
//! `customers[0].targets[1].adress`), found from the spans of the parsed document, and for an
//! unknown key the keys its table does take, with the nearest one suggested. Used to turn the
//! parser's errors into [`crate::ConfigError`]s that name the key and a fix.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where every key is documented: named in every fix, never a source file (the binary prints the
/// reference configuration wherever it is installed).
pub(crate) const DOCUMENTED: &str = "`sallyport config example` prints every key with its meaning";

/// The key path of the innermost key or value whose span holds `offset`, or `None` when the text
/// does not parse as TOML (a syntax error) or nothing there holds it.
pub(crate) fn path_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    in_table(doc.get_ref(), offset, "")
}

/// The key path of the table whose span is exactly `span` (what a "missing field" error points
/// at): `Some("")` for the whole document, `None` when the text does not parse.
pub(crate) fn table_at(text: &str, span: Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    if doc.span() == span {
        return Some(String::new());
    }
    Some(exact_in_table(doc.get_ref(), &span, "").unwrap_or_default())
}

fn exact_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let here = join(path, key.get_ref());
        exact_in_value(value, span, &here)
    })
}

fn exact_in_value(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: &str) -> Option<String> {
    if value.span() == *span && matches!(value.get_ref(), DeValue::Table(_)) {
        return Some(path.to_owned());
    }
    match value.get_ref() {
        DeValue::Table(t) => exact_in_table(t, span, path),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| exact_in_value(item, span, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn holds(span: Range<usize>, offset: usize) -> bool {
    span.contains(&offset)
}

fn in_table(table: &DeTable<'_>, offset: usize, path: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let here = join(path, key.get_ref());
        if holds(key.span(), offset) {
            return Some(here);
        }
        if let Some(found) = in_value(value, offset, &here) {
            return Some(found);
        }
    }
    None
}

fn in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    let inner = match value.get_ref() {
        DeValue::Table(t) => in_table(t, offset, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let here = format!("{path}[{i}]");
            in_value(item, offset, &here)
        }),
        _ => None,
    };
    inner.or_else(|| holds(value.span(), offset).then(|| path.to_owned()))
}

/// The table a key path is in, as it is written in a file: `customers[0].targets[1].adress` is in
/// `[[customers.targets]]`, `server.listn` in `[server]`, `sever` at the top level.
pub(crate) fn table_of(path: &str) -> String {
    let Some((table, _)) = path.rsplit_once('.') else {
        return "the top level".into();
    };
    let bare: String = table
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part))
        .collect::<Vec<_>>()
        .join(".");
    if table.ends_with(']') {
        format!("[[{bare}]]")
    } else {
        format!("[{bare}]")
    }
}

/// An unknown key, from serde's message: the key, and the keys the table takes.
pub(crate) struct UnknownKey {
    /// The key as written.
    pub(crate) key: String,
    /// The keys its table takes.
    pub(crate) known: Vec<String>,
}

impl UnknownKey {
    /// Reads serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", or "there
    /// are no fields").
    pub(crate) fn from_message(message: &str) -> Option<UnknownKey> {
        let rest = message.trim().strip_prefix("unknown field `")?;
        let (key, rest) = rest.split_once('`')?;
        let known = rest
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        Some(UnknownKey {
            key: key.to_owned(),
            known,
        })
    }

    /// The known key this one most likely meant, if one is close.
    pub(crate) fn nearest(&self) -> Option<&str> {
        let key = self.key.to_ascii_lowercase();
        self.known
            .iter()
            .map(|k| (distance(&key, k), k))
            .filter(|(d, k)| {
                *d <= 2.max(k.len() / 3) || key.starts_with(k.as_str()) || k.starts_with(&key)
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k.as_str())
    }

    /// The fix for this unknown key in `table`.
    pub(crate) fn fix(&self, table: &str) -> String {
        let known = self
            .known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let keys = if known.is_empty() {
            format!("{table} takes no keys")
        } else {
            format!("{table} takes {known}")
        };
        match self.nearest() {
            Some(k) => format!("did you mean `{k}`? {keys}; {DOCUMENTED}"),
            None => format!("remove it or correct its name: {keys}; {DOCUMENTED}"),
        }
    }
}

/// Levenshtein distance between two short ASCII keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_names_tables_arrays_and_keys() {
        let text = "[server]\nlisten = \"x\"\n\n[[customers]]\nid = \"a\"\n\n[[customers]]\nid = \"b\"\n\n[[customers.targets]]\nid = \"t\"\nadress = \"y\"\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(
            path_at(text, at("listen")).as_deref(),
            Some("server.listen")
        );
        assert_eq!(
            path_at(text, at("adress")).as_deref(),
            Some("customers[1].targets[0].adress")
        );
        assert_eq!(
            path_at(text, at("\"b\"")).as_deref(),
            Some("customers[1].id")
        );
        assert_eq!(path_at("[server\n", 1), None, "a syntax error has no path");
    }

    #[test]
    fn the_table_is_named_as_written() {
        assert_eq!(table_of("server.listn"), "[server]");
        assert_eq!(
            table_of("customers[0].targets[1].adress"),
            "[[customers.targets]]"
        );
        assert_eq!(table_of("customers[0].webhook.urll"), "[customers.webhook]");
        assert_eq!(table_of("sever"), "the top level");
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_known_key() {
        let u = UnknownKey::from_message(
            "unknown field `listn`, expected one of `listen`, `data_dir`, `trust_domain`",
        )
        .unwrap();
        assert_eq!(u.key, "listn");
        assert_eq!(u.known, ["listen", "data_dir", "trust_domain"]);
        assert_eq!(u.nearest(), Some("listen"));
        let fix = u.fix("[server]");
        assert!(fix.starts_with("did you mean `listen`?"), "{fix}");
        assert!(
            fix.contains("`data_dir`") && fix.contains("sallyport config example"),
            "{fix}"
        );

        let u = UnknownKey::from_message("unknown field `speed`, expected `id`").unwrap();
        assert_eq!(u.nearest(), None);
        assert!(
            u.fix("[limits]")
                .starts_with("remove it or correct its name")
        );
        assert_eq!(
            UnknownKey::from_message("unknown field `x`, there are no fields")
                .unwrap()
                .known,
            Vec::<String>::new()
        );
        assert!(UnknownKey::from_message("invalid type: string").is_none());
    }
}
