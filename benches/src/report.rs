//! Writing a benchmark's section into a shared Markdown report, leaving the other sections
//! (written by other benchmarks) as they are.

use std::path::Path;

use anyhow::Context;

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Where the section titled `title` (a `## ` line) lies in `text`: from its title up to the
/// next `## ` title or the end.
fn span(text: &str, title: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(&format!("{title}\n"))?;
    let rest = &text[start + title.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + title.len() + i + 1);
    Some(start..end)
}

/// `text` with the section titled `title` (a `## ` line) replaced by `section`, or `section`
/// added at the end.
pub fn replace_section(text: &str, title: &str, section: &str) -> String {
    let Some(found) = span(text, title) else {
        let mut out = text.trim_end().to_string();
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(section);
        return out;
    };
    let mut out = text[..found.start].to_string();
    out.push_str(section);
    if found.end < text.len() {
        out.push('\n');
        out.push_str(&text[found.end..]);
    }
    out
}

/// Writes `section` (titled `title`) into the Markdown file at `path`, replacing that section
/// if the file has it, atomically.
pub fn write_section(path: &Path, title: &str, section: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, replace_section(&existing, title, section))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes a whole report to `path`, carrying over from the file there the sections titled
/// `kept` (written by other benchmarks into the same file).
pub fn write_keeping(path: &Path, report: &str, kept: &[&str]) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut text = report.to_string();
    for title in kept {
        if let Some(found) = span(&existing, title) {
            text = replace_section(&text, title, &existing[found]);
        }
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TITLE: &str = "## Mine";

    #[test]
    fn the_section_is_replaced_in_place_or_added() {
        let new = format!("{TITLE}\n\nnew\n");
        assert_eq!(replace_section("", TITLE, &new), new);
        assert_eq!(
            replace_section("# T\n\n## A\n\na\n", TITLE, &new),
            format!("# T\n\n## A\n\na\n\n{new}")
        );
        let old = format!("# T\n\n{TITLE}\n\nold\n\n## B\n\nb\n");
        assert_eq!(
            replace_section(&old, TITLE, &new),
            format!("# T\n\n{new}\n## B\n\nb\n")
        );
        let last = format!("# T\n\n## A\n\n{TITLE}\n\nold\n");
        assert_eq!(
            replace_section(&last, TITLE, &new),
            format!("# T\n\n## A\n\n{new}")
        );
    }

    #[test]
    fn a_whole_report_keeps_the_sections_other_benchmarks_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.md");
        std::fs::write(
            &path,
            format!("# Old\n\n## A\n\nold a\n\n{TITLE}\n\nmine\n"),
        )
        .unwrap();
        write_keeping(&path, "# New\n\n## A\n\nnew a\n", &[TITLE, "## Gone"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("# New\n\n## A\n\nnew a\n\n{TITLE}\n\nmine\n")
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(today().len(), 10);
    }
}
