//! The bbolt file format (etcd's backend database), as much as a snapshot needs: writing a
//! database of top-level buckets holding key/values, and reading one back. etcd's snapshot
//! file is such a database, and `etcdctl snapshot status` opens it with bbolt and checks it
//! (`tx.Check`), so what is written here keeps every invariant bbolt checks: both meta pages
//! with their FNV-1a checksums, an empty freelist, every page below the high-water mark
//! reachable exactly once, keys strictly increasing in every page and within each subtree.
//!
//! Layout: pages 0 and 1 are the metas (txid 2 and 1), page 2 the freelist, page 3 the root
//! bucket's leaf (one element per bucket), then each bucket's pages: a single leaf (with
//! overflow pages for large values) or, past [`LEAF_ITEMS`] keys, leaves under one branch.
//! Integers are little-endian, as bbolt writes them on x86-64 and arm64.

/// Page size written (bbolt's default on Linux).
pub const PAGE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
/// Element flag of a leaf entry that is a bucket.
const BUCKET_FLAG: u32 = 0x01;
/// Page header, leaf or branch element, and bucket header are 16 bytes each.
const HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Keys per leaf page before a bucket is split under a branch page (a page counts its
/// elements in 16 bits).
const LEAF_ITEMS: usize = 1024;
/// Bytes of a meta body covered by its checksum.
const META_SUMMED: usize = 56;

/// A top-level bucket and its key/values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Its name.
    pub name: Vec<u8>,
    /// Its key/values, keys strictly increasing.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why bytes are not a database this module can read, or buckets cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BoltError(pub String);

fn bad(what: impl Into<String>) -> BoltError {
    BoltError(what.into())
}

/// 64-bit FNV-1a, bbolt's meta checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE).max(1)
}

/// One page (with its overflow pages) being laid out.
struct PageOut {
    id: u64,
    bytes: Vec<u8>,
}

impl PageOut {
    fn new(id: u64, flags: u16, count: usize, body: usize) -> Result<PageOut, BoltError> {
        let count = u16::try_from(count)
            .ok()
            .filter(|c| *c < u16::MAX)
            .ok_or_else(|| bad("too many elements in one page"))?;
        let mut bytes = vec![0u8; pages_for(HEADER + body) * PAGE];
        let overflow = (bytes.len() / PAGE - 1) as u32;
        bytes[0..8].copy_from_slice(&id.to_le_bytes());
        bytes[8..10].copy_from_slice(&flags.to_le_bytes());
        bytes[10..12].copy_from_slice(&count.to_le_bytes());
        bytes[12..16].copy_from_slice(&overflow.to_le_bytes());
        Ok(PageOut { id, bytes })
    }

    fn pages(&self) -> u64 {
        (self.bytes.len() / PAGE) as u64
    }
}

/// A leaf page of `items` (each with its element flags) at page `id`.
fn leaf(id: u64, items: &[(u32, &[u8], &[u8])]) -> Result<PageOut, BoltError> {
    let data: usize = items.iter().map(|(_, k, v)| k.len() + v.len()).sum();
    let mut page = PageOut::new(id, LEAF, items.len(), ELEMENT * items.len() + data)?;
    let mut at = HEADER + ELEMENT * items.len();
    for (i, (flags, key, value)) in items.iter().enumerate() {
        let element = HEADER + ELEMENT * i;
        let fields = [
            *flags,
            (at - element) as u32,
            key.len() as u32,
            value.len() as u32,
        ];
        for (n, field) in fields.iter().enumerate() {
            page.bytes[element + 4 * n..element + 4 * n + 4].copy_from_slice(&field.to_le_bytes());
        }
        page.bytes[at..at + key.len()].copy_from_slice(key);
        at += key.len();
        page.bytes[at..at + value.len()].copy_from_slice(value);
        at += value.len();
    }
    Ok(page)
}

/// A branch page at `id` over children (first key, page id).
fn branch(id: u64, children: &[(&[u8], u64)]) -> Result<PageOut, BoltError> {
    let keys: usize = children.iter().map(|(k, _)| k.len()).sum();
    let mut page = PageOut::new(id, BRANCH, children.len(), ELEMENT * children.len() + keys)?;
    let mut at = HEADER + ELEMENT * children.len();
    for (i, (key, child)) in children.iter().enumerate() {
        let element = HEADER + ELEMENT * i;
        page.bytes[element..element + 4].copy_from_slice(&((at - element) as u32).to_le_bytes());
        page.bytes[element + 4..element + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        page.bytes[element + 8..element + 16].copy_from_slice(&child.to_le_bytes());
        page.bytes[at..at + key.len()].copy_from_slice(key);
        at += key.len();
    }
    Ok(page)
}

fn strictly_increasing<'a>(keys: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut last: Option<&[u8]> = None;
    for key in keys {
        if key.is_empty() || last.is_some_and(|l| l >= key) {
            return false;
        }
        last = Some(key);
    }
    true
}

/// Writes a database holding `buckets` (names strictly increasing, each bucket's keys too, no
/// key empty). Returns the file's bytes: a whole number of pages.
pub fn write(buckets: &[Bucket]) -> Result<Vec<u8>, BoltError> {
    if !strictly_increasing(buckets.iter().map(|b| b.name.as_slice())) {
        return Err(bad(
            "bucket names must be non-empty and strictly increasing",
        ));
    }
    for bucket in buckets {
        if !strictly_increasing(bucket.items.iter().map(|(k, _)| k.as_slice())) {
            return Err(bad(format!(
                "keys of bucket {:?} must be non-empty and strictly increasing",
                String::from_utf8_lossy(&bucket.name)
            )));
        }
    }
    // The root page holds a 16-byte bucket header per bucket (32 bytes for an empty bucket,
    // written inline), so its size is known before the buckets are laid out after it.
    let root_body: usize = buckets
        .iter()
        .map(|b| ELEMENT + b.name.len() + if b.items.is_empty() { 32 } else { 16 })
        .sum();
    let root_id = 3u64;
    let mut next = root_id + pages_for(HEADER + root_body) as u64;
    let mut pages: Vec<PageOut> = Vec::new();
    let mut headers: Vec<Vec<u8>> = Vec::new();
    for bucket in buckets {
        if bucket.items.is_empty() {
            // Inline and empty: no root page, then an empty leaf page header.
            let mut header = vec![0u8; 32];
            header[16 + 8..16 + 10].copy_from_slice(&LEAF.to_le_bytes());
            headers.push(header);
            continue;
        }
        let chunks: Vec<&[(Vec<u8>, Vec<u8>)]> = bucket.items.chunks(LEAF_ITEMS).collect();
        // More than one leaf hangs under a branch, laid out first: its size depends only on
        // the leaves' first keys.
        let branch_id = (chunks.len() > 1).then(|| {
            let body: usize = chunks.iter().map(|c| ELEMENT + c[0].0.len()).sum();
            let id = next;
            next += pages_for(HEADER + body) as u64;
            id
        });
        let mut children = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            let items: Vec<(u32, &[u8], &[u8])> = chunk
                .iter()
                .map(|(k, v)| (0, k.as_slice(), v.as_slice()))
                .collect();
            let page = leaf(next, &items)?;
            children.push((chunk[0].0.as_slice(), next));
            next += page.pages();
            pages.push(page);
        }
        let bucket_root = match branch_id {
            Some(id) => {
                pages.push(branch(id, &children)?);
                id
            }
            None => children[0].1,
        };
        let mut header = vec![0u8; 16];
        header[0..8].copy_from_slice(&bucket_root.to_le_bytes());
        headers.push(header);
    }
    let root_items: Vec<(u32, &[u8], &[u8])> = buckets
        .iter()
        .zip(&headers)
        .map(|(b, h)| (BUCKET_FLAG, b.name.as_slice(), h.as_slice()))
        .collect();
    pages.push(leaf(root_id, &root_items)?);
    pages.push(PageOut::new(2, FREELIST, 0, 0)?);
    let high_water = next;
    let mut file = vec![0u8; high_water as usize * PAGE];
    for (id, txid) in [(0u64, 2u64), (1, 1)] {
        let at = id as usize * PAGE;
        let page = &mut file[at..at + PAGE];
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[8..10].copy_from_slice(&META.to_le_bytes());
        let meta = &mut page[HEADER..HEADER + META_SUMMED + 8];
        meta[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&VERSION.to_le_bytes());
        meta[8..12].copy_from_slice(&(PAGE as u32).to_le_bytes());
        meta[16..24].copy_from_slice(&root_id.to_le_bytes());
        meta[32..40].copy_from_slice(&2u64.to_le_bytes());
        meta[40..48].copy_from_slice(&high_water.to_le_bytes());
        meta[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a(&meta[..META_SUMMED]);
        meta[56..64].copy_from_slice(&sum.to_le_bytes());
    }
    for page in pages {
        let at = page.id as usize * PAGE;
        file[at..at + page.bytes.len()].copy_from_slice(&page.bytes);
    }
    Ok(file)
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, BoltError> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| bad("truncated"))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BoltError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| bad("truncated"))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, BoltError> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("truncated"))
}

/// A database being read: its bytes up to the high-water mark and its page size.
struct Reader<'a> {
    file: &'a [u8],
    page: usize,
    /// Pages read so far: a damaged file could point back at one.
    seen: std::cell::RefCell<std::collections::HashSet<u64>>,
}

impl Reader<'_> {
    /// The bytes of page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<&[u8], BoltError> {
        let at = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_mul(self.page))
            .ok_or_else(|| bad(format!("page {id} is out of range")))?;
        let header = self
            .file
            .get(at..at + HEADER)
            .ok_or_else(|| bad(format!("page {id} lies past the end of the file")))?;
        if u64_at(header, 0)? != id {
            return Err(bad(format!("page {id} carries another id")));
        }
        let overflow = u32_at(header, 12)? as usize;
        let end = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page))
            .and_then(|len| at.checked_add(len))
            .filter(|end| *end <= self.file.len())
            .ok_or_else(|| bad(format!("page {id} runs past the end of the file")))?;
        Ok(&self.file[at..end])
    }

    /// The key/values (with element flags) of the tree rooted at `id`, in order; `depth`
    /// bounds the recursion a damaged file could otherwise make endless.
    fn items(
        &self,
        id: u64,
        depth: usize,
        out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), BoltError> {
        if depth > 16 {
            return Err(bad("the page tree is deeper than any this format writes"));
        }
        if !self.seen.borrow_mut().insert(id) {
            return Err(bad(format!("page {id} is referenced twice")));
        }
        let page = self.page(id)?;
        for child in items_of(page, out)? {
            self.items(child, depth + 1, out)?;
        }
        Ok(())
    }
}

/// The elements of one page: a leaf's key/values go into `out`; a branch's children are
/// returned, in order.
fn items_of(page: &[u8], out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>) -> Result<Vec<u64>, BoltError> {
    let flags = u16_at(page, 8)?;
    let count = u16_at(page, 10)? as usize;
    let mut children = Vec::new();
    for i in 0..count {
        let element = HEADER + ELEMENT * i;
        match flags {
            LEAF => {
                let (kind, pos, ksize, vsize) = (
                    u32_at(page, element)?,
                    u32_at(page, element + 4)? as usize,
                    u32_at(page, element + 8)? as usize,
                    u32_at(page, element + 12)? as usize,
                );
                let key_at = element + pos;
                let key = page
                    .get(key_at..key_at + ksize)
                    .ok_or_else(|| bad("a key lies outside its page"))?;
                let value = page
                    .get(key_at + ksize..key_at + ksize + vsize)
                    .ok_or_else(|| bad("a value lies outside its page"))?;
                out.push((kind, key.to_vec(), value.to_vec()));
            }
            BRANCH => children.push(u64_at(page, element + 8)?),
            other => return Err(bad(format!("a page of type {other:#x} in a bucket"))),
        }
    }
    Ok(children)
}

/// Reads the top-level buckets of a database and their key/values (nested buckets are
/// refused: this module never writes them). Bytes after the high-water mark are ignored.
pub fn read(file: &[u8]) -> Result<Vec<Bucket>, BoltError> {
    let meta = |id: usize| -> Result<(u64, u64, usize), BoltError> {
        let page = id * PAGE;
        let body = file
            .get(page + HEADER..page + HEADER + META_SUMMED + 8)
            .ok_or_else(|| bad("shorter than two pages: not a bbolt database"))?;
        if u32_at(body, 0)? != MAGIC {
            return Err(bad("no bbolt magic number: not a bbolt database"));
        }
        if u32_at(body, 4)? != VERSION {
            return Err(bad("a bbolt format version other than 2"));
        }
        if u64_at(body, 56)? != fnv1a(&body[..META_SUMMED]) {
            return Err(bad("meta page checksum mismatch"));
        }
        let page_size = u32_at(body, 8)? as usize;
        if page_size < 1024 || !page_size.is_power_of_two() {
            return Err(bad(format!("page size {page_size}")));
        }
        Ok((u64_at(body, 48)?, u64_at(body, 16)?, page_size))
    };
    // bbolt uses the valid meta with the higher transaction id.
    let (_, root, page) = match (meta(0), meta(1)) {
        (Ok(a), Ok(b)) => {
            if a.0 >= b.0 {
                a
            } else {
                b
            }
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(e), Err(_)) => return Err(e),
    };
    let reader = Reader {
        file,
        page,
        seen: Default::default(),
    };
    let mut top = Vec::new();
    reader.items(root, 0, &mut top)?;
    let mut buckets = Vec::with_capacity(top.len());
    for (kind, name, value) in top {
        if kind & BUCKET_FLAG == 0 {
            return Err(bad("a key/value outside any bucket"));
        }
        let bucket_root = u64_at(&value, 0)?;
        let mut items = Vec::new();
        if bucket_root == 0 {
            let inline = value
                .get(HEADER..)
                .ok_or_else(|| bad("an inline bucket without its page"))?;
            if !items_of(inline, &mut items)?.is_empty() {
                return Err(bad("a branch in an inline bucket"));
            }
        } else {
            reader.items(bucket_root, 0, &mut items)?;
        }
        if items.iter().any(|(kind, _, _)| kind & BUCKET_FLAG != 0) {
            return Err(bad("nested buckets"));
        }
        buckets.push(Bucket {
            name,
            items: items.into_iter().map(|(_, k, v)| (k, v)).collect(),
        });
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(name: &str, items: &[(&[u8], &[u8])]) -> Bucket {
        Bucket {
            name: name.as_bytes().to_vec(),
            items: items
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn buckets_round_trip_through_the_file() {
        let big = vec![7u8; 3 * PAGE + 100];
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..2500u32)
            .map(|i| (i.to_be_bytes().to_vec(), format!("value {i}").into_bytes()))
            .collect();
        let buckets = vec![
            bucket("a-empty", &[]),
            bucket("ballast", &[(b"data", &big), (b"manifest", b"{}")]),
            Bucket {
                name: b"key".to_vec(),
                items: many,
            },
            bucket("meta", &[(b"consistent_index", &9u64.to_be_bytes())]),
        ];
        let file = write(&buckets).expect("written");
        assert_eq!(file.len() % PAGE, 0);
        assert_eq!(read(&file).expect("read back"), buckets);
        // A trailer after the pages (etcd's sha256) changes nothing.
        let mut trailed = file.clone();
        trailed.extend_from_slice(&[1u8; 32]);
        assert_eq!(read(&trailed).expect("read back"), buckets);
    }

    #[test]
    fn the_metas_carry_bbolts_checksum_and_damage_is_an_error_not_a_panic() {
        let file = write(&[bucket("b", &[(b"k", b"v")])]).expect("written");
        // The checksum of meta 0 as bbolt computes it over its first 56 bytes.
        let body = &file[HEADER..HEADER + 64];
        assert_eq!(
            u64::from_le_bytes(body[56..64].try_into().expect("8 bytes")),
            fnv1a(&body[..56])
        );
        assert!(read(&file[..PAGE]).is_err());
        assert!(read(b"not a database at all").is_err());
        for at in (0..file.len()).step_by(61) {
            let mut damaged = file.clone();
            damaged[at] ^= 0xff;
            let _ = read(&damaged);
        }
    }

    #[test]
    fn unordered_or_empty_keys_are_refused() {
        assert!(write(&[bucket("b", &[(b"2", b""), (b"1", b"")])]).is_err());
        assert!(write(&[bucket("b", &[(b"", b"")])]).is_err());
        assert!(write(&[bucket("b", &[]), bucket("a", &[])]).is_err());
    }
}
