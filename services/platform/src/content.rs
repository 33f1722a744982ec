//! What an uploaded file may be (records' documents, messaging's attachments): a content type
//! on the allowlist whose bytes look like it (magic numbers; UTF-8 without NUL for text),
//! within the size limits.

/// The largest file (10 MiB).
pub const MAX_BYTES: i64 = 10 * 1024 * 1024;
/// The largest chunk of an upload.
pub const MAX_CHUNK: usize = 1024 * 1024;
/// The bytes the first chunk must hold (or the whole document, if smaller) to be recognized.
pub const SNIFF_BYTES: usize = 8;

/// The content types carehub takes.
pub const ALLOWED: [&str; 4] = ["application/pdf", "image/png", "image/jpeg", "text/plain"];

/// Whether `head` (the first bytes of the file) looks like `content_type`.
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

/// Checks what an upload declares before its bytes arrive — `info.content_type` on the
/// allowlist, `info.size_bytes` within 1..=[`MAX_BYTES`], `info.sha256` a hex SHA-256 — adding
/// each failure to `v`; the decoded hash when it is one.
pub fn check_declared(
    v: &mut crate::errors::FieldViolations,
    content_type: &str,
    size_bytes: i64,
    sha256: &str,
) -> Option<Vec<u8>> {
    v.check(
        ALLOWED.contains(&content_type),
        "info.content_type",
        "must be application/pdf, image/png, image/jpeg or text/plain",
    );
    v.check(
        (1..=MAX_BYTES).contains(&size_bytes),
        "info.size_bytes",
        "must be from 1 to 10485760",
    );
    let sha = data_encoding::HEXLOWER_PERMISSIVE
        .decode(sha256.as_bytes())
        .ok()
        .filter(|s| s.len() == 32);
    v.check(
        sha.is_some(),
        "info.sha256",
        "must be the hex SHA-256 of the bytes",
    );
    sha
}

/// The checks of one upload as its chunks arrive: chunk sizes, the declared size, the content
/// type against the first bytes, the SHA-256 at the end. Each refusal names the request field
/// it is about and why, for an INVALID_ARGUMENT.
pub struct Intake {
    content_type: String,
    declared: i64,
    sha256: Vec<u8>,
    received: i64,
    chunks: i32,
    hasher: sha2::Sha256,
}

/// A refused upload: the field and the reason.
pub type Refusal = (&'static str, &'static str);

impl Intake {
    /// An upload declared as `content_type` (on [`ALLOWED`]), `size` bytes (1..=[`MAX_BYTES`])
    /// hashing to `sha256`, all checked by the caller before.
    pub fn new(content_type: &str, size: i64, sha256: Vec<u8>) -> Self {
        use sha2::Digest as _;
        Intake {
            content_type: content_type.to_owned(),
            declared: size,
            sha256,
            received: 0,
            chunks: 0,
            hasher: sha2::Sha256::new(),
        }
    }

    /// Takes the next chunk; its sequence number (from 0).
    pub fn take(&mut self, bytes: &[u8]) -> Result<i32, Refusal> {
        use sha2::Digest as _;
        if bytes.is_empty() || bytes.len() > MAX_CHUNK {
            return Err(("chunk", "must hold 1 byte to 1 MiB"));
        }
        self.received += i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if self.received > self.declared {
            return Err(("info.size_bytes", "the bytes are longer than declared"));
        }
        if self.chunks == 0 {
            let need = usize::try_from(self.declared)
                .unwrap_or(SNIFF_BYTES)
                .min(SNIFF_BYTES);
            if bytes.len() < need {
                return Err(("chunk", "the first chunk must hold at least 8 bytes"));
            }
            if !looks_like(&self.content_type, bytes) {
                return Err(("info.content_type", "does not match the bytes"));
            }
        }
        self.hasher.update(bytes);
        self.chunks += 1;
        Ok(self.chunks - 1)
    }

    /// After the last chunk: the number of chunks, once the size and hash are as declared.
    pub fn finish(self) -> Result<i32, Refusal> {
        use sha2::Digest as _;
        if self.received != self.declared {
            return Err(("info.size_bytes", "the bytes are shorter than declared"));
        }
        if self.hasher.finalize().as_slice() != self.sha256.as_slice() {
            return Err(("info.sha256", "does not match the bytes"));
        }
        Ok(self.chunks)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
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

    fn sha(bytes: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(bytes).to_vec()
    }

    #[test]
    fn an_intake_takes_what_was_declared_and_refuses_each_difference_by_field() {
        let pdf = b"%PDF-1.7\n1 0 obj\n".to_vec();
        let size = i64::try_from(pdf.len()).unwrap();
        let mut ok = Intake::new("application/pdf", size, sha(&pdf));
        assert_eq!(ok.take(&pdf[..9]), Ok(0));
        assert_eq!(ok.take(&pdf[9..]), Ok(1));
        assert_eq!(ok.finish(), Ok(2));

        let mut wrong_type = Intake::new("image/png", size, sha(&pdf));
        assert_eq!(
            wrong_type.take(&pdf),
            Err(("info.content_type", "does not match the bytes"))
        );
        let mut short_first = Intake::new("application/pdf", size, sha(&pdf));
        assert_eq!(short_first.take(&pdf[..3]).unwrap_err().0, "chunk");
        let mut longer = Intake::new("application/pdf", size - 1, sha(&pdf));
        assert_eq!(longer.take(&pdf).unwrap_err().0, "info.size_bytes");
        let mut shorter = Intake::new("application/pdf", size + 1, sha(&pdf));
        shorter.take(&pdf).unwrap();
        assert_eq!(shorter.finish().unwrap_err().0, "info.size_bytes");
        let mut other_hash = Intake::new("application/pdf", size, sha(b"else"));
        other_hash.take(&pdf).unwrap();
        assert_eq!(other_hash.finish().unwrap_err().0, "info.sha256");
        let mut empty = Intake::new("application/pdf", size, sha(&pdf));
        assert_eq!(empty.take(&[]).unwrap_err().0, "chunk");
        let mut huge = Intake::new("text/plain", MAX_BYTES, sha(&pdf));
        assert_eq!(
            huge.take(&vec![b'a'; MAX_CHUNK + 1]).unwrap_err().0,
            "chunk"
        );
    }
}
