//! Errors as a user reads them, for the library and the command line
//! alike: an error and its causes on one line.

/// An error and its causes on one line, joined by `": "`; a cause whose
/// text the line already ends with is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn causes_on_one_line_each_once() {
        let inner = E("disk full", None);
        let e = E("writing blob", Some(Box::new(inner)));
        assert_eq!(error_chain(&e), "writing blob: disk full");
        let repeats = E("a: disk full", Some(Box::new(E("disk full", None))));
        assert_eq!(error_chain(&repeats), "a: disk full");
    }
}
