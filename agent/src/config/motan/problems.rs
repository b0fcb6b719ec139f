//! Every problem of one configuration, each line naming file, section, entry and key.
pub(super) struct Problems<'a> {
    pub(super) src: &'a str,
    pub(super) errors: Vec<String>,
    pub(super) warnings: Vec<String>,
}

impl Problems<'_> {
    /// Record an error once (an entry's own value and the spec built from it may both see it).
    pub(super) fn error(
        &mut self,
        section: &str,
        entry: Option<&str>,
        key: Option<&str>,
        msg: impl std::fmt::Display,
    ) {
        let line = self.line(section, entry, key, msg);
        if !self.errors.contains(&line) {
            self.errors.push(line);
        }
    }

    pub(super) fn warn(
        &mut self,
        section: &str,
        entry: Option<&str>,
        key: Option<&str>,
        msg: impl std::fmt::Display,
    ) {
        let line = self.line(section, entry, key, msg);
        self.warnings.push(line);
    }

    fn line(
        &self,
        section: &str,
        entry: Option<&str>,
        key: Option<&str>,
        msg: impl std::fmt::Display,
    ) -> String {
        let mut s = format!("{}: section {section}", self.src);
        if let Some(e) = entry {
            s.push_str(&format!(", entry {e}"));
        }
        if let Some(k) = key {
            s.push_str(&format!(", key {k}"));
        }
        format!("{s}: {msg}")
    }
}
