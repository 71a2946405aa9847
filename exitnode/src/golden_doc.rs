//! Golden vectors written into `docs/protocol.md` between markers, checked by tests
//! (`UPDATE_GOLDEN=1` rewrites the section from the code).

/// Asserts that `docs/protocol.md` holds `want` between
/// `<!-- NAME:begin -->` and `<!-- NAME:end -->` (as a `text` block), or writes it
/// there with `UPDATE_GOLDEN` set.
pub(crate) fn check(name: &str, want: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let begin = format!("<!-- {name}:begin -->\n```text\n");
    let end = format!("```\n<!-- {name}:end -->");
    let a = doc
        .find(&begin)
        .unwrap_or_else(|| panic!("{name}:begin marker"));
    let b = doc
        .find(&end)
        .unwrap_or_else(|| panic!("{name}:end marker"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let new = format!("{}{begin}{want}{}", &doc[..a], &doc[b..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert_eq!(
        &doc[a + begin.len()..b],
        want,
        "docs/protocol.md and the code disagree"
    );
}
