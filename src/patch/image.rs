//! Image references: the repository an image comes from, its tag, and the version a tag
//! names.
//!
//! Contract: pure. The patch-safety check keeps images in their repository with
//! [`repository`]; the playbook renderer bounds image parameters with [`version_of`].

/// An image reference without its tag or digest: `registry:5000/team/app:1.2` →
/// `registry:5000/team/app`.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// A tag: what a registry accepts (letters, digits, `_ . -`, at most 128, not starting with
/// `.` or `-`).
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A version tag split into its numbers and its variant: `1.4.3` → `([1, 4, 3], "")`,
/// `v2.10.0-alpine` → `([2, 10], "alpine")` (a leading `v` ignored, trailing zero parts
/// dropped so `1.4.2.0` is `1.4.2`); `None` for tags that are not versions (`latest`).
pub fn version_of(tag: &str) -> Option<(Vec<u64>, &str)> {
    let core = tag.strip_prefix('v').unwrap_or(tag);
    let (core, variant) = core.split_once('-').unwrap_or((core, ""));
    let mut numbers = core.split('.').map(|n| n.parse::<u64>().ok()).collect::<Option<Vec<_>>>()?;
    while numbers.len() > 1 && numbers.last() == Some(&0) {
        numbers.pop();
    }
    Some((numbers, variant))
}

/// The tag of an image reference, if it has one (a digest-pinned reference has none to
/// compare).
pub fn tag_of(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    let repo = repository(image);
    image[repo.len()..].strip_prefix(':')
}

/// A repository path a registry accepts: lowercase letters, digits and `. _ - /`, with an
/// optional `host:port` first.
pub fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}
