//! A small lexical scan of Cedar policy text for the positions Cedar's API does not expose: where each
//! `@id` annotation and each template slot (`?principal`, `?resource`) is. Skips strings and comments.

/// Byte offsets of interesting tokens in a policy file, in file order.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// Offset of the `@` of every `@id` annotation.
    pub id_annotations: Vec<usize>,
    /// Offset of the `?` of the first template slot, if any.
    pub first_slot: Option<usize>,
}

/// Scans `src`. Cedar has `//` line comments and `"..."` strings with backslash escapes; nothing else
/// can hide an `@` or a `?`.
pub(crate) fn scan(src: &str) -> Marks {
    let b = src.as_bytes();
    let mut marks = Marks::default();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'@' => {
                if ident_after(b, i + 1) == b"id" {
                    marks.id_annotations.push(i);
                }
                i += 1;
            }
            b'?' => {
                if marks.first_slot.is_none()
                    && matches!(ident_after(b, i + 1), b"principal" | b"resource")
                {
                    marks.first_slot = Some(i);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    marks
}

/// The identifier starting at `start` after optional whitespace (empty if none).
fn ident_after(b: &[u8], mut start: usize) -> &[u8] {
    while start < b.len() && b[start].is_ascii_whitespace() {
        start += 1;
    }
    let mut end = start;
    while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
        end += 1;
    }
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_annotations_and_slots_outside_strings_and_comments() {
        let src = "// @id(\"no\") ?principal\n@id(\"a\") @idx(\"b\")\npermit(principal == ?principal, action, resource)\nwhen { \"@id \\\" ?resource\" == \"x\" };\n@ id(\"c\") forbid(principal, action, resource);";
        let m = scan(src);
        let at: Vec<&str> = m.id_annotations.iter().map(|&o| &src[o..o + 2]).collect();
        assert_eq!(at, ["@i", "@ "]);
        let slot = m.first_slot.unwrap();
        assert_eq!(&src[slot..slot + 10], "?principal");
        assert!(slot > src.find("permit").unwrap());
    }
}
