//! Positions in the file: field paths such as
//! `tenant[0] ("acme").pool[1].backends[2].port`, the span of a path in the
//! document, the path at a byte offset, and `line:col`.

use std::{fmt, ops::Range};

use toml_edit::Item;

/// One step of a field path.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    /// Array index, with the element's `name` when it has one: shown in
    /// messages because `tenant[3]` alone is hard to find in a long file.
    Index(usize, Option<String>),
}

/// A field path such as `tenant[0] ("acme").pool[1].backends[2].port`.
#[derive(Debug, Clone, Default)]
pub(super) struct FieldPath(pub(super) Vec<Seg>);

impl FieldPath {
    pub(super) fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_owned()));
        p
    }

    pub(super) fn index(&self, i: usize, name: Option<&str>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i, name.map(str::to_owned)));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n, None) => write!(f, "[{n}]")?,
                Seg::Index(n, Some(name)) => write!(f, "[{n}] ({name:?})")?,
            }
        }
        Ok(())
    }
}

/// The element's `name`, for [`Seg::Index`].
pub(super) fn element_name(item: &Item) -> Option<String> {
    item.as_table_like()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// The position of `path` in the document: the span of its value, else of
/// its key, else of the deepest ancestor that exists (so that a missing key
/// points at the table that lacks it).
pub(super) fn locate(root: &Item, path: &FieldPath) -> Option<Range<usize>> {
    let mut best = root.span();
    let mut item = root;
    for seg in &path.0 {
        let next = match seg {
            Seg::Key(k) => {
                let Some((key, child)) = item.as_table_like().and_then(|t| t.get_key_value(k))
                else {
                    break;
                };
                if let Some(s) = key.span() {
                    best = Some(s);
                }
                child
            }
            Seg::Index(i, _) => match item.get(*i) {
                Some(child) => child,
                None => break,
            },
        };
        if let Some(s) = next.span() {
            best = Some(s);
        }
        item = next;
    }
    best
}

/// The field path at byte `offset`: the deepest key or value whose span
/// contains it. Every node is visited because the span of a `[[table]]`
/// element covers only its header, not the keys below it.
pub(super) fn path_at(root: &Item, offset: usize) -> FieldPath {
    struct Search {
        offset: usize,
        cur: Vec<Seg>,
        // Best path so far and the length of its span (shorter wins a tie).
        best: Option<(Vec<Seg>, usize)>,
    }
    impl Search {
        fn consider(&mut self, span: Option<Range<usize>>) {
            let Some(s) = span else { return };
            // An empty span (at the end of the file) still "contains" its start.
            if s.start > self.offset || self.offset >= s.end.max(s.start + 1) {
                return;
            }
            let better = match &self.best {
                None => true,
                Some((p, len)) => {
                    self.cur.len() > p.len() || (self.cur.len() == p.len() && s.len() < *len)
                }
            };
            if better {
                self.best = Some((self.cur.clone(), s.len()));
            }
        }
        fn walk(&mut self, item: &Item) {
            if let Some(table) = item.as_table_like() {
                for (name, child) in table.iter() {
                    self.cur.push(Seg::Key(name.to_owned()));
                    self.consider(table.get_key_value(name).and_then(|(k, _)| k.span()));
                    self.consider(child.span());
                    self.walk(child);
                    self.cur.pop();
                }
            } else {
                let len = item
                    .as_array_of_tables()
                    .map(toml_edit::ArrayOfTables::len)
                    .or_else(|| item.as_array().map(toml_edit::Array::len))
                    .unwrap_or(0);
                for i in 0..len {
                    let Some(child) = item.get(i) else { continue };
                    self.cur.push(Seg::Index(i, element_name(child)));
                    self.consider(child.span());
                    self.walk(child);
                    self.cur.pop();
                }
            }
        }
    }
    let mut search = Search {
        offset,
        cur: Vec::new(),
        best: None,
    };
    search.walk(root);
    FieldPath(search.best.map(|(p, _)| p).unwrap_or_default())
}

/// 1-based line and column (in characters) of byte `offset`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// toml's messages may span lines; ours are one line each.
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
