//! Names the commit `breakwater_build_info{commit}` reports: `BREAKWATER_COMMIT`
//! when set (the Dockerfile's build has no `.git`), else `git rev-parse` of
//! the checkout, else `unknown`. Reruns only when HEAD or the branch it points
//! to moves, so an ordinary build does not rebuild the crate.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// Tells cargo to rerun when `path` changes. Only existing paths: cargo
/// reruns a build script every time for one that does not exist.
fn watch(path: &str) -> bool {
    let exists = Path::new(path).exists();
    if exists {
        println!("cargo:rerun-if-changed={path}");
    }
    exists
}

fn main() {
    println!("cargo:rerun-if-env-changed=BREAKWATER_COMMIT");
    let given = std::env::var("BREAKWATER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = match given {
        Some(c) => c.trim().to_string(),
        None => {
            // A worktree's HEAD is apart from the refs it shares with the
            // main checkout: ask git where each is.
            if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
                watch(&head);
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(loose) = git(&["rev-parse", "--git-path", &branch])
                && !watch(&loose)
            {
                // The branch is packed: its next commit makes the loose file.
                if let Some(dir) = Path::new(&loose).parent().and_then(Path::to_str) {
                    watch(dir);
                }
            }
            if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
                watch(&packed);
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=BREAKWATER_COMMIT={commit}");
}
