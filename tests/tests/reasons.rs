//! The README's table of breakwater's own answers ("When breakwater answers
//! itself") against `error::Reason`: every reason has its row, with its
//! status, and every row names a reason breakwater has.

use std::collections::BTreeMap;

use breakwater::error::Reason;

/// `x-breakwater-reason` token → status, from the README's table.
fn readme_rows() -> BTreeMap<String, u16> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## When breakwater answers itself")
        .nth(1)
        .expect("the README has the section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", status, `token`, when, ""
        let (Some(status), Some(token)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(status) = status.parse::<u16>() else {
            continue; // the header and its rule
        };
        let token = token.trim_matches('`').to_string();
        assert!(
            rows.insert(token.clone(), status).is_none(),
            "{token} has two rows"
        );
    }
    rows
}

#[test]
fn the_readme_lists_every_reason_with_its_status() {
    let rows = readme_rows();
    for reason in Reason::ALL {
        let token = reason.as_str();
        let status = rows
            .get(token)
            .unwrap_or_else(|| panic!("README has no row for `{token}`: {rows:?}"));
        assert_eq!(
            *status,
            reason.status().as_u16(),
            "README's status for `{token}`"
        );
    }
    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    for token in rows.keys() {
        assert!(
            known.contains(&token.as_str()),
            "README lists `{token}`, which is no Reason"
        );
    }
}
