//! Publish paths: the names files are published under.

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Why a publish path was refused. Each message names the rule so a publisher can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("path is {0} bytes long; the limit is 1024")]
    TooLong(usize),
    /// The path contains a NUL byte or another control character.
    #[error("path contains a control character (NUL, newline, ...)")]
    ControlChar,
    /// The path has an empty segment (`a//b`, a leading or a trailing `/`).
    #[error("path has an empty segment ('//', or a leading or trailing '/')")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    /// The path has a backslash (edges refuse them in requests, so it could not be served).
    #[error("path has a backslash, which edges refuse in requests")]
    Backslash,
}

/// Checks that `path` (already percent-decoded, without the leading `/`) may name a file.
///
/// A path is 1 to 1024 bytes of segments separated by `/`; no segment is empty, `.` or `..`,
/// and no byte is a control character or a backslash. Paths are case-sensitive and are stored as given.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.len()));
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(validate_path("a/b.txt"), Ok(()));
        assert_eq!(validate_path("x..y/.hidden"), Ok(()));
        assert_eq!(validate_path(""), Err(PathError::Empty));
        assert_eq!(validate_path("a//b"), Err(PathError::EmptySegment));
        assert_eq!(validate_path("a\\b.txt"), Err(PathError::Backslash));
        assert_eq!(validate_path("/a"), Err(PathError::EmptySegment));
        assert_eq!(validate_path("a/"), Err(PathError::EmptySegment));
        assert_eq!(validate_path("a/../b"), Err(PathError::DotSegment));
        assert_eq!(validate_path("./b"), Err(PathError::DotSegment));
        assert_eq!(validate_path("a\0b"), Err(PathError::ControlChar));
        assert_eq!(validate_path(&"a".repeat(1024)), Ok(()));
        assert_eq!(
            validate_path(&"a".repeat(1025)),
            Err(PathError::TooLong(1025))
        );
    }
}
