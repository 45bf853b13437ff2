//! The images in the cache (`<cache>/images/<name>.json` beside
//! `<name>-<key>.ext4`): their names, their metadata, finding one.

use std::fs;
use std::path::PathBuf;

use super::{io_err, ImageMeta, UserlandError, DEFAULT_IMAGE, MAX_NAME_LEN};

pub(super) const IMAGES_SUBDIR: &str = "images";

/// `<cache>/images`.
pub fn images_dir() -> PathBuf {
    crate::cache::root().join(IMAGES_SUBDIR)
}

/// Image names become file names: short, and no path tricks.
pub fn validate_name(name: &str) -> Result<(), UserlandError> {
    let bad = |reason: String| {
        Err(UserlandError::BadName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(format!(
            "contains {c:?}; only A-Z, a-z, 0-9, '-' and '_' are allowed"
        ));
    }
    Ok(())
}

pub(super) fn validate_package(p: &str) -> Result<(), UserlandError> {
    let mut chars = p.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'))
    {
        return Err(UserlandError::BadPackage(p.into()));
    }
    Ok(())
}

pub(super) fn meta_path(name: &str) -> PathBuf {
    images_dir().join(format!("{name}.json"))
}

/// The metadata of the image `name`, if it was built.
pub fn load_meta(name: &str) -> Result<Option<ImageMeta>, UserlandError> {
    validate_name(name)?;
    let path = meta_path(name);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| UserlandError::BadMetadata { path, source })
}

/// The image file of the built image `name`.
pub fn find(name: &str) -> Result<PathBuf, UserlandError> {
    let not_built = || UserlandError::NotBuilt {
        name: name.into(),
        dir: images_dir(),
    };
    // The image becomes the guest's root: only a cache of our own will do.
    // Looking creates nothing (a refused run leaves no cache behind).
    if crate::cache::existing_trusted_dir(IMAGES_SUBDIR)?.is_none() {
        return Err(not_built());
    }
    let meta = load_meta(name)?.ok_or_else(not_built)?;
    // The metadata names a file in its own directory, never elsewhere.
    validate_file_name(&meta.file).map_err(|_| not_built())?;
    let path = images_dir().join(&meta.file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_built())
    }
}

fn validate_file_name(file: &str) -> Result<(), ()> {
    let ok = file.ends_with(".ext4")
        && !file.starts_with('.')
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(()).ok_or(())
}

/// The default image, when it has been built.
pub fn default_image() -> Option<PathBuf> {
    match find(DEFAULT_IMAGE) {
        Ok(p) => Some(p),
        Err(e @ UserlandError::Cache(_)) => {
            tracing::warn!("not using the default image: {e}");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_packages_are_checked() {
        for ok in ["default", "py-3_11", &"a".repeat(64)] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["python3", "g++", "libc6.1-dev"] {
            validate_package(ok).unwrap();
        }
        for bad in ["", "-x", "Python", "a b", "x;rm"] {
            assert!(validate_package(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_file_names_stay_in_the_images_directory() {
        assert!(validate_file_name("default-0123456789abcdef01234567.ext4").is_ok());
        for bad in [
            "../x.ext4",
            "/etc/passwd",
            ".hidden.ext4",
            "x.img",
            "a/b.ext4",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
