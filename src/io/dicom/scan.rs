//! A bounds check of a DICOM file's element structure, run on its bytes before
//! `dicom-object` parses them. The parser trusts the file: it reserves a value's
//! length as the header states it, and it descends into nested sequences by
//! recursion. So a few-KB file whose element claims 0xFFFFFFF0 bytes, or whose
//! sequences nest 10 000 deep, ends the process (an allocation failure, a stack
//! overflow). Here every element's length is checked against the bytes its
//! container (item, sequence, file) actually holds, delimiters must match what they
//! close, and sequences may nest at most [`MAX_DEPTH`] levels, all in one loop with an
//! explicit stack, so the check itself cannot overflow or allocate beyond the nesting
//! limit. A deflated data set is inflated (bounded) and checked the same way.

use std::io::Read;

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Sequences nested deeper than this are refused (real objects use a handful).
pub const MAX_DEPTH: usize = 64;
/// A deflated data set may inflate to at most this many bytes.
const MAX_INFLATED: u64 = 1 << 30;

const UNDEFINED: u32 = 0xFFFF_FFFF;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoding {
    ExplicitLe,
    ImplicitLe,
    ExplicitBe,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A sequence's items.
    Seq,
    /// One item's elements.
    Item,
    /// Encapsulated pixel data: items holding compressed fragments.
    Fragments,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    kind: Kind,
    /// The offset where a defined-length container ends; `None`: at its delimiter.
    end: Option<usize>,
    /// How its elements are encoded (an undefined-length UN holds implicit VR LE).
    enc: Encoding,
}

/// Check `bytes` (a whole file: 128-byte preamble, `DICM`, meta group, data set).
/// The error is one line saying what is wrong and where (the caller adds the file name).
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("no DICM marker at byte 128".into());
    }
    let (ts, data_start) = meta_group(bytes)?;
    let ts = ts.trim_end_matches(['\0', ' ']);
    match ts {
        // deflated explicit VR little endian: the data set is a raw deflate stream
        "1.2.840.10008.1.2.1.99" => {
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(&bytes[data_start..])
                .take(MAX_INFLATED + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("its deflated data set cannot be inflated: {e}"))?;
            if inflated.len() as u64 > MAX_INFLATED {
                return Err(format!(
                    "its deflated data set inflates to more than {} GiB",
                    MAX_INFLATED >> 30
                ));
            }
            walk(&inflated, 0, Encoding::ExplicitLe)
        }
        "1.2.840.10008.1.2" => walk(bytes, data_start, Encoding::ImplicitLe),
        "1.2.840.10008.1.2.2" => walk(bytes, data_start, Encoding::ExplicitBe),
        _ => walk(bytes, data_start, Encoding::ExplicitLe),
    }
}

/// The transfer syntax UID and the offset after the meta group (group 0002, always
/// explicit VR little endian), its elements' lengths checked.
fn meta_group(bytes: &[u8]) -> Result<(String, usize), String> {
    let mut pos = 132;
    let mut ts = String::new();
    while pos + 8 <= bytes.len() && u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) == 0x0002 {
        let h = header(bytes, pos, Encoding::ExplicitLe, bytes.len())?;
        if h.len == UNDEFINED {
            return Err(format!(
                "meta element {} has an undefined length",
                tag_text(h.tag)
            ));
        }
        let value = pos + h.size..pos + h.size + h.len as usize;
        if h.tag == Tag(0x0002, 0x0010) {
            ts = String::from_utf8_lossy(&bytes[value.clone()]).into_owned();
        }
        pos = value.end;
    }
    if ts.is_empty() {
        return Err("no transfer syntax UID (0002,0010) in the file meta group".into());
    }
    Ok((ts, pos))
}

struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    /// Bytes of the header itself.
    size: usize,
}

fn u16_at(b: &[u8], p: usize, enc: Encoding) -> u16 {
    let x = [b[p], b[p + 1]];
    if enc == Encoding::ExplicitBe {
        u16::from_be_bytes(x)
    } else {
        u16::from_le_bytes(x)
    }
}

fn u32_at(b: &[u8], p: usize, enc: Encoding) -> u32 {
    let x = [b[p], b[p + 1], b[p + 2], b[p + 3]];
    if enc == Encoding::ExplicitBe {
        u32::from_be_bytes(x)
    } else {
        u32::from_le_bytes(x)
    }
}

fn tag_text(t: Tag) -> String {
    format!("({:04X},{:04X})", t.0, t.1)
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
fn long_vr(vr: VR) -> bool {
    use VR::*;
    matches!(
        vr,
        OB | OD | OF | OL | OV | OW | SQ | SV | UC | UN | UR | UT | UV
    )
}

/// The element header at `pos` (its value length checked against `limit`, except an
/// undefined length, which the caller judges).
fn header(b: &[u8], pos: usize, enc: Encoding, limit: usize) -> Result<Header, String> {
    if pos + 8 > limit {
        return Err(format!(
            "truncated: an element header at byte {pos} runs past the end of its container ({limit} bytes)"
        ));
    }
    let tag = Tag(u16_at(b, pos, enc), u16_at(b, pos + 2, enc));
    let (vr, len, size) = if tag.0 == 0xFFFE || enc == Encoding::ImplicitLe {
        (None, u32_at(b, pos + 4, enc), 8)
    } else {
        let code = [b[pos + 4], b[pos + 5]];
        let vr = VR::from_binary(code).ok_or_else(|| {
            format!(
                "element {} at byte {pos} has an invalid VR {:?}",
                tag_text(tag),
                String::from_utf8_lossy(&code)
            )
        })?;
        if long_vr(vr) {
            if pos + 12 > limit {
                return Err(format!(
                    "truncated: the header of {} at byte {pos}",
                    tag_text(tag)
                ));
            }
            (Some(vr), u32_at(b, pos + 8, enc), 12)
        } else {
            (Some(vr), u32::from(u16_at(b, pos + 6, enc)), 8)
        }
    };
    if len != UNDEFINED && (len as usize) > limit.saturating_sub(pos + size) {
        return Err(format!(
            "element {} at byte {pos} claims {len} bytes, but only {} remain in its container",
            tag_text(tag),
            limit.saturating_sub(pos + size)
        ));
    }
    Ok(Header { tag, vr, len, size })
}

/// The size of one value of a binary VR: a length that is not a multiple of it makes
/// the parser read fewer bytes than the header says and lose its place in the stream.
fn unit_of(vr: VR) -> usize {
    use VR::*;
    match vr {
        US | SS | OW => 2,
        UL | SL | FL | AT | OF | OL => 4,
        FD | SV | UV | OD | OV => 8,
        _ => 1,
    }
}

/// The dictionary's VR of a tag (implicit VR data sets).
fn dictionary_vr(tag: Tag) -> Option<VR> {
    StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed())
}

fn is_sequence_implicit(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|e| e.vr().relaxed() == VR::SQ)
}

/// Walk the elements from `start` to the end of `b` with an explicit stack.
fn walk(b: &[u8], start: usize, enc: Encoding) -> Result<(), String> {
    let mut w = Walker {
        stack: Vec::new(),
        pos: start,
        enc,
    };
    loop {
        w.close_finished()?;
        if w.pos == b.len() {
            return match w.stack.last() {
                None => Ok(()),
                Some(_) => Err("truncated: the file ends inside a sequence or item".into()),
            };
        }
        let limit = w.stack.iter().rev().find_map(|o| o.end).unwrap_or(b.len());
        let h = header(b, w.pos, w.enc_here(), limit)?;
        if h.tag.0 == 0xFFFE {
            w.item_or_delimiter(&h)?;
        } else {
            w.element(&h)?;
        }
    }
}

/// The walk's place in the data set: the byte position and the open containers.
struct Walker {
    stack: Vec<Open>,
    pos: usize,
    /// The data set's encoding (a container may have its own).
    enc: Encoding,
}

impl Walker {
    fn cur(&self) -> Option<Open> {
        self.stack.last().copied()
    }

    fn enc_here(&self) -> Encoding {
        self.cur().map(|o| o.enc).unwrap_or(self.enc)
    }

    fn value_end(&self, h: &Header) -> usize {
        self.pos + h.size + h.len as usize
    }

    /// Close every defined-length container that ends here.
    fn close_finished(&mut self) -> Result<(), String> {
        while let Some(&Open { end: Some(end), .. }) = self.stack.last() {
            if self.pos < end {
                break;
            }
            if self.pos > end {
                return Err(format!(
                    "an element overruns its item or sequence (byte {}, the container ends at {end})",
                    self.pos
                ));
            }
            self.stack.pop();
        }
        Ok(())
    }

    /// An (FFFE,xxxx) header: an item, a fragment or a delimiter, each only where it
    /// belongs.
    fn item_or_delimiter(&mut self, h: &Header) -> Result<(), String> {
        let (pos, cur) = (self.pos, self.cur());
        let undefined_here = cur.is_some_and(|o| o.end.is_none());
        match (h.tag.1, cur.map(|o| o.kind)) {
            (0xE000, Some(Kind::Fragments)) => {
                if h.len == UNDEFINED {
                    return Err(format!(
                        "a pixel data fragment at byte {pos} has an undefined length"
                    ));
                }
                self.pos = self.value_end(h);
            }
            (0xE000, Some(Kind::Seq)) => {
                let end = (h.len != UNDEFINED).then(|| self.value_end(h));
                let enc = self.enc_here();
                self.stack.push(Open {
                    kind: Kind::Item,
                    end,
                    enc,
                });
                self.pos += h.size;
            }
            (0xE00D, Some(Kind::Item)) | (0xE0DD, Some(Kind::Seq | Kind::Fragments))
                if undefined_here =>
            {
                self.stack.pop();
                self.pos += h.size;
            }
            (e, _) => {
                return Err(format!(
                    "a misplaced item or delimiter (FFFE,{e:04X}) at byte {pos}"
                ));
            }
        }
        Ok(())
    }

    /// A data element: a sequence opens, encapsulated pixel data opens its fragments,
    /// anything else is skipped after its length is checked against its VR.
    fn element(&mut self, h: &Header) -> Result<(), String> {
        let pos = self.pos;
        if matches!(
            self.cur().map(|o| o.kind),
            Some(Kind::Seq | Kind::Fragments)
        ) {
            return Err(format!(
                "element {} at byte {pos} stands directly in a sequence (only items may)",
                tag_text(h.tag)
            ));
        }
        let sequence = match h.vr {
            Some(vr) => vr == VR::SQ || (vr == VR::UN && h.len == UNDEFINED),
            None => h.len == UNDEFINED || is_sequence_implicit(h.tag),
        };
        let pixel_data = h.tag == Tag(0x7FE0, 0x0010);
        if let Some(vr) = h.vr.or_else(|| dictionary_vr(h.tag))
            && h.len != UNDEFINED
            && !(h.len as usize).is_multiple_of(unit_of(vr))
        {
            return Err(format!(
                "element {} at byte {pos} is {vr:?} of {} bytes, not a multiple of {}",
                tag_text(h.tag),
                h.len,
                unit_of(vr)
            ));
        }
        if sequence && !(pixel_data && h.len == UNDEFINED) {
            self.open_sequence(h)
        } else if h.len == UNDEFINED {
            if !pixel_data {
                return Err(format!(
                    "element {} at byte {pos} has an undefined length but is no sequence",
                    tag_text(h.tag)
                ));
            }
            let enc = self.enc_here();
            self.stack.push(Open {
                kind: Kind::Fragments,
                end: None,
                enc,
            });
            self.pos += h.size;
            Ok(())
        } else {
            self.pos = self.value_end(h);
            Ok(())
        }
    }

    /// A sequence opens, unless it would nest deeper than [`MAX_DEPTH`].
    fn open_sequence(&mut self, h: &Header) -> Result<(), String> {
        let depth = self.stack.iter().filter(|o| o.kind == Kind::Seq).count();
        if depth + 1 > MAX_DEPTH {
            return Err(format!(
                "sequences nested deeper than {MAX_DEPTH} levels (at byte {})",
                self.pos
            ));
        }
        let enc = if h.vr == Some(VR::UN) {
            Encoding::ImplicitLe
        } else {
            self.enc_here()
        };
        let end = (h.len != UNDEFINED).then(|| self.value_end(h));
        self.stack.push(Open {
            kind: Kind::Seq,
            end,
            enc,
        });
        self.pos += h.size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file: preamble, DICM, a meta group naming `ts`, then `data`.
    pub fn file(ts: &str, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b.extend_from_slice(b"DICM");
        let mut uid = ts.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        b.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        b.extend_from_slice(&(uid.len() as u16).to_le_bytes());
        b.extend_from_slice(&uid);
        b.extend_from_slice(data);
        b
    }

    fn el(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&group.to_le_bytes());
        b.extend_from_slice(&elem.to_le_bytes());
        b.extend_from_slice(vr);
        if long_vr(VR::from_binary(*vr).unwrap()) {
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        b.extend_from_slice(value);
        b
    }

    /// A sequence of undefined length with one undefined-length item around `inner`.
    fn nest(inner: &[u8]) -> Vec<u8> {
        let mut b = vec![
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        b.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        b.extend_from_slice(inner);
        b.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        b
    }

    const LE: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn a_plain_data_set_passes() {
        let mut d = el(0x0010, 0x0010, b"PN", b"DOE^J ");
        d.extend(nest(&el(0x0008, 0x1150, b"UI", b"1.2\0")));
        d.extend(el(0x7FE0, 0x0010, b"OW", &[0u8; 16]));
        check(&file(LE, &d)).unwrap();
    }

    #[test]
    fn a_length_beyond_the_file_is_refused() {
        let mut d = el(0x0010, 0x0010, b"LO", b"ab");
        d.extend([
            0x10, 0x00, 0x20, 0x00, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        let e = check(&file(LE, &d)).unwrap_err();
        assert!(e.contains("claims 4294967280 bytes"), "{e}");
    }

    #[test]
    fn nesting_is_limited_without_recursion() {
        let mut ok = el(0x0010, 0x0010, b"LO", b"ab");
        for _ in 0..MAX_DEPTH - 1 {
            ok = nest(&ok);
        }
        check(&file(LE, &ok)).unwrap();
        let mut deep = ok.clone();
        for _ in 0..10_000 {
            deep = nest(&deep);
        }
        let e = check(&file(LE, &deep)).unwrap_err();
        assert!(e.contains("nested deeper than 64"), "{e}");
    }

    #[test]
    fn truncation_and_stray_delimiters_are_refused() {
        let d = nest(&el(0x0010, 0x0010, b"LO", b"ab"));
        let f = file(LE, &d);
        for cut in [f.len() - 1, f.len() - 8, f.len() - 16] {
            assert!(check(&f[..cut]).is_err(), "cut at {cut}");
        }
        let stray = file(LE, &[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(check(&stray).unwrap_err().contains("misplaced"));
    }

    #[test]
    fn a_binary_value_of_a_length_the_parser_cannot_read_whole_is_refused() {
        // UL of 30 bytes: the parser would read 7 values and lose 2 bytes of the stream
        let d = el(0x0008, 0x0018, b"UL", &[0u8; 30]);
        let e = check(&file(LE, &d)).unwrap_err();
        assert!(e.contains("UL of 30 bytes, not a multiple of 4"), "{e}");
        check(&file(LE, &el(0x0008, 0x0018, b"UL", &[0u8; 28]))).unwrap();
    }

    #[test]
    fn implicit_vr_uses_the_dictionary_for_defined_length_sequences() {
        // (0008,1115) ReferencedSeriesSequence, defined length 4: an item header
        // that claims more than the sequence holds
        let mut d = vec![0x08, 0x00, 0x15, 0x11, 8, 0, 0, 0];
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0x40, 0, 0, 0]);
        let e = check(&file("1.2.840.10008.1.2", &d)).unwrap_err();
        assert!(e.contains("claims 64 bytes"), "{e}");
    }
}
