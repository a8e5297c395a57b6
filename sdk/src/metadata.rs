//! Ordered string key/values carried by a message (routing attributes) or a mutation.
//!
//! A `Vec` and not a map: messages carry a handful of entries, order matters for
//! re-encoding attachments byte-for-byte, and duplicate keys are legal in some protocols.

/// Ordered key/value pairs. `get` returns the first entry with the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append an entry (duplicates allowed).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.entries.push((key.into(), value.into()));
    }

    /// Replace the first entry with `key`, or append one.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.into(),
            None => self.entries.push((key.to_owned(), value.into())),
        }
    }

    /// The value of the first entry with `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of key and value lengths, for the metadata size limit.
    pub fn byte_len(&self) -> usize {
        self.entries.iter().fold(0usize, |n, (k, v)| {
            n.saturating_add(k.len()).saturating_add(v.len())
        })
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_first_and_appends_new() {
        let mut m: Metadata = [("a", "1"), ("b", "2"), ("a", "3")].into_iter().collect();
        m.set("a", "x");
        m.set("c", "4");
        let got: Vec<_> = m.iter().collect();
        assert_eq!(got, vec![("a", "x"), ("b", "2"), ("a", "3"), ("c", "4")]);
        assert_eq!(m.get("a"), Some("x"));
        assert_eq!(m.byte_len(), 8);
    }
}
