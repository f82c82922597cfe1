//! The little of the ZIP format that `torch.save` archives need: the central directory
//! (with ZIP64 sizes and offsets), stored entries served straight from the memory map, and
//! deflated ones (archives re-packed by other tools) inflated on demand.
//!
//! Every offset and size read from the file is bounds-checked against it, so a truncated or
//! corrupt archive is an error, never an out-of-bounds read.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;

type R<T> = std::result::Result<T, String>;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Where one member's data lives in the archive.
#[derive(Clone, Debug)]
pub(crate) struct ZipEntry {
    method: u16,
    /// Offset of the (possibly compressed) data from the start of the file.
    data_start: usize,
    compressed: usize,
    size: usize,
}

impl ZipEntry {
    pub(crate) fn size(&self) -> usize {
        self.size
    }
}

fn slice(data: &[u8], at: usize, len: usize) -> R<&[u8]> {
    at.checked_add(len)
        .and_then(|end| data.get(at..end))
        .ok_or_else(|| {
            format!(
                "zip structure at byte {at} (+{len}) lies past the end of the file ({} bytes): truncated?",
                data.len()
            )
        })
}

fn u16_at(data: &[u8], at: usize) -> R<u16> {
    Ok(u16::from_le_bytes(
        slice(data, at, 2)?.try_into().expect("2 bytes"),
    ))
}

fn u32_at(data: &[u8], at: usize) -> R<u32> {
    Ok(u32::from_le_bytes(
        slice(data, at, 4)?.try_into().expect("4 bytes"),
    ))
}

fn u64_at(data: &[u8], at: usize) -> R<u64> {
    Ok(u64::from_le_bytes(
        slice(data, at, 8)?.try_into().expect("8 bytes"),
    ))
}

fn to_usize(v: u64, what: &str) -> R<usize> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory"))
}

/// Parse the central directory: member name → entry.
pub(crate) fn read_directory(data: &[u8]) -> R<HashMap<String, ZipEntry>> {
    if data.len() < 22 {
        return Err(format!(
            "{} bytes is too short for a zip archive (truncated?)",
            data.len()
        ));
    }
    // The end-of-central-directory record is in the last 22 + 65535 (comment) bytes.
    let lowest = data.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lowest..=data.len() - 22)
        .rev()
        .find(|&i| data[i..i + 4] == EOCD_SIG.to_le_bytes())
        .ok_or("no end-of-central-directory record: truncated or not a zip archive")?;
    let mut count = u16_at(data, eocd + 10)? as u64;
    let mut cd_size = u32_at(data, eocd + 12)? as u64;
    let mut cd_offset = u32_at(data, eocd + 16)? as u64;
    if eocd >= 20 && u32_at(data, eocd - 20)? == EOCD64_LOCATOR_SIG {
        let at = to_usize(u64_at(data, eocd - 20 + 8)?, "zip64 record offset")?;
        if u32_at(data, at)? != EOCD64_SIG {
            return Err(format!("bad zip64 end-of-directory record at byte {at}"));
        }
        count = u64_at(data, at + 32)?;
        cd_size = u64_at(data, at + 40)?;
        cd_offset = u64_at(data, at + 48)?;
    }
    let cd_offset = to_usize(cd_offset, "central directory offset")?;
    let cd_size = to_usize(cd_size, "central directory size")?;
    slice(data, cd_offset, cd_size)?;
    // Each central record is at least 46 bytes: bound the count before allocating.
    if count > (cd_size / 46) as u64 {
        return Err(format!(
            "central directory claims {count} entries in {cd_size} bytes"
        ));
    }

    let mut out = HashMap::with_capacity(count as usize);
    let mut p = cd_offset;
    for _ in 0..count {
        if u32_at(data, p)? != CENTRAL_SIG {
            return Err(format!("bad central directory record at byte {p}"));
        }
        let flags = u16_at(data, p + 8)?;
        let method = u16_at(data, p + 10)?;
        let mut compressed = u32_at(data, p + 20)? as u64;
        let mut size = u32_at(data, p + 24)? as u64;
        let name_len = u16_at(data, p + 28)? as usize;
        let extra_len = u16_at(data, p + 30)? as usize;
        let comment_len = u16_at(data, p + 32)? as usize;
        let mut local = u32_at(data, p + 42)? as u64;
        let name = String::from_utf8_lossy(slice(data, p + 46, name_len)?).into_owned();
        // ZIP64 extended information: the 8-byte fields present are those whose 4-byte
        // counterparts are saturated, in this order.
        let extra = slice(data, p + 46 + name_len, extra_len)?;
        let mut q = 0;
        while q + 4 <= extra.len() {
            let id = u16::from_le_bytes([extra[q], extra[q + 1]]);
            let len = u16::from_le_bytes([extra[q + 2], extra[q + 3]]) as usize;
            let body = slice(extra, q + 4, len)
                .map_err(|_| format!("zip member '{name}': malformed extra field"))?;
            if id == 0x0001 {
                let mut r = 0;
                let mut next = |field: &mut u64| -> R<()> {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(body, r)
                            .map_err(|_| format!("zip member '{name}': short zip64 field"))?;
                        r += 8;
                    }
                    Ok(())
                };
                next(&mut size)?;
                next(&mut compressed)?;
                next(&mut local)?;
            }
            q += 4 + len;
        }
        if flags & 1 != 0 {
            return Err(format!("zip member '{name}' is encrypted"));
        }
        let local = to_usize(local, "local header offset")?;
        if u32_at(data, local)? != LOCAL_SIG {
            return Err(format!(
                "zip member '{name}': no local header at byte {local}"
            ));
        }
        let data_start =
            local + 30 + u16_at(data, local + 26)? as usize + u16_at(data, local + 28)? as usize;
        let entry = ZipEntry {
            method,
            data_start,
            compressed: to_usize(compressed, "compressed size")?,
            size: to_usize(size, "size")?,
        };
        slice(data, entry.data_start, entry.compressed)
            .map_err(|e| format!("zip member '{name}': {e}"))?;
        if method == 0 && entry.compressed != entry.size {
            return Err(format!(
                "zip member '{name}' is stored but its sizes differ ({} vs {})",
                entry.compressed, entry.size
            ));
        }
        out.insert(name, entry);
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// The uncompressed bytes of a member: borrowed from `data` when stored, inflated otherwise.
pub(crate) fn read_entry<'a>(data: &'a [u8], e: &ZipEntry) -> R<Cow<'a, [u8]>> {
    let raw = slice(data, e.data_start, e.compressed)?;
    match e.method {
        0 => Ok(Cow::Borrowed(raw)),
        8 => {
            let mut out = Vec::with_capacity(e.size);
            flate2::read::DeflateDecoder::new(raw)
                .take(e.size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|err| format!("cannot inflate: {err}"))?;
            if out.len() != e.size {
                return Err(format!(
                    "inflated to {} bytes but the directory says {}",
                    out.len(),
                    e.size
                ));
            }
            Ok(Cow::Owned(out))
        }
        m => Err(format!(
            "compression method {m} is not supported (only stored and deflate)"
        )),
    }
}
