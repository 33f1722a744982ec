//! What a document may be: a content type on the allowlist whose bytes look like it (magic
//! numbers; UTF-8 without NUL for text), within the size limits.

/// The largest document (10 MiB).
pub const MAX_BYTES: i64 = 10 * 1024 * 1024;
/// The largest chunk of an upload.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// The bytes the first chunk must hold (or the whole document, if smaller) to be recognized.
pub const SNIFF_BYTES: usize = 8;

/// The content types a chart takes.
pub const ALLOWED: [&str; 4] = ["application/pdf", "image/png", "image/jpeg", "text/plain"];

/// Whether `head` (the first bytes of the document) looks like `content_type`.
pub fn looks_like(content_type: &str, head: &[u8]) -> bool {
    match content_type {
        "application/pdf" => head.starts_with(b"%PDF-"),
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "text/plain" => {
            !head.contains(&0)
                && match std::str::from_utf8(head) {
                    Ok(_) => true,
                    // A character cut at the end of the chunk is fine; anything else is not text.
                    Err(e) => e.error_len().is_none(),
                }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_is_recognized_by_its_bytes_and_nothing_else() {
        let samples: [(&str, &[u8]); 4] = [
            ("application/pdf", b"%PDF-1.7\n"),
            ("image/png", b"\x89PNG\r\n\x1a\n\0\0"),
            ("image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            ("text/plain", "Blutzucker nüchtern: 5,4 mmol/L".as_bytes()),
        ];
        for (declared, _) in samples {
            for (actual, bytes) in samples {
                let text_looks_like_text =
                    declared == "text/plain" && actual != "image/png" && actual != "image/jpeg";
                assert_eq!(
                    looks_like(declared, bytes),
                    declared == actual || text_looks_like_text,
                    "{actual} declared as {declared}"
                );
            }
        }
        // An executable is nothing we take, whatever it says it is.
        for declared in ALLOWED {
            assert!(!looks_like(declared, b"MZ\x90\0\x03\0\0\0"), "{declared}");
            assert!(
                !looks_like(declared, b"\x7fELF\x02\x01\x01\0"),
                "{declared}"
            );
        }
        assert!(!looks_like("application/zip", b"PK\x03\x04"));
        // A multi-byte character cut by the chunk's end is still text.
        assert!(looks_like("text/plain", &"ü".as_bytes()[..1]));
    }
}
