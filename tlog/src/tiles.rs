//! The log as static tiles (C2SP `tlog-tiles`): tile paths, hash tiles and
//! entry bundles made from stored hashes, and, for clients, a
//! [`NodeSource`] over fetched tiles from which the ordinary tree-head and
//! proof functions of [`super::merkle`] work unchanged.
//!
//! A hash tile `(L, N)` of width `W` holds the `W` hashes
//! `MTH(D[(N·256 + i)·256^L .. (N·256 + i + 1)·256^L])`, i < W: the stored
//! complete subtrees at tree level `8·L`, indices `N·256 + i`
//! (tlog-tiles §Merkle Tree). An entry bundle `N` holds entries
//! `N·256 .. N·256 + W`, each as a big-endian uint16 length and the bytes
//! (§Log entries).

use super::merkle::{node_hash, Hash, NodeSource, MAX_TREE_SIZE};
use std::collections::HashMap;
use thiserror::Error;

/// Path prefix under which the association serves the log's resources
/// (tlog-tiles `<prefix>`): `<prefix>checkpoint`, `<prefix>tile/...`.
/// Here because both sides use it: the association serves there, members
/// fetch from there.
pub const LOG_PREFIX: &str = "/log/";

/// Tree levels per tile (tlog-tiles: tiles of height 8).
pub const TILE_HEIGHT: u8 = 8;

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

/// Highest tile level that can hold anything: a tree of at most
/// [`MAX_TREE_SIZE`] (2^63) leaves has no tile at level 8 or above
/// (256^8 = 2^64).
pub const MAX_TILE_LEVEL: u8 = 7;

/// Longest entry an entry bundle can carry (its uint16 length prefix).
pub const MAX_BUNDLE_ENTRY_LEN: usize = u16::MAX as usize;

/// Longest tile path accepted (bytes after `tile/`): `entries/` and 7
/// index elements of 4 bytes with a `.p/255` suffix fit in far less.
const MAX_TILE_PATH_LEN: usize = 64;

/// Which resource a tile path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// A hash tile at this tile level (0..=63 in a path; 0..=7 can exist).
    Hash(u8),
    /// An entry bundle.
    Entries,
}

/// A tile or entry bundle: `tile/<L>/<N>[.p/<W>]` or
/// `tile/entries/<N>[.p/<W>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Hash tile level or entry bundle.
    pub kind: TileKind,
    /// Index within its level.
    pub index: u64,
    /// Number of hashes or entries: 256 for a full tile, 1..=255 partial.
    pub width: u16,
}

/// Why a tile path is refused (the client's fault).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TilePathError {
    /// Not a tile path as tlog-tiles spells them.
    #[error("malformed tile path: {0}")]
    Malformed(&'static str),
}

/// A decimal without sign or superfluous leading zero, at most `max`.
fn canonical_decimal(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n <= max)
}

/// `N` as tlog-tiles path elements: zero-padded 3-digit groups, all but
/// the last prefixed with `x` (1234067 → `x001/x234/067`).
pub fn encode_index(n: u64) -> String {
    let mut groups = vec![n % 1000];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let mut out = String::new();
    for (i, g) in groups.iter().rev().enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i + 1 < groups.len() {
            out.push('x');
        }
        out.push_str(&format!("{g:03}"));
    }
    out
}

impl Tile {
    /// Parses the part of a path after `tile/`. Only the canonical
    /// spelling is accepted, so that one resource has one URL (and one
    /// cache entry).
    pub fn parse(path: &str) -> Result<Self, TilePathError> {
        let bad = TilePathError::Malformed;
        if path.len() > MAX_TILE_PATH_LEN {
            return Err(bad("too long"));
        }
        let (first, rest) = path.split_once('/').ok_or(bad("no tile index"))?;
        let kind = if first == "entries" {
            TileKind::Entries
        } else {
            let l = canonical_decimal(first, 63).ok_or(bad("level is not 0..63"))?;
            TileKind::Hash(l as u8)
        };
        // `<N>` or `<N>.p/<W>`: the width follows the last index element.
        let (index_part, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                let w = canonical_decimal(w, TILE_WIDTH - 1)
                    .filter(|w| *w >= 1)
                    .ok_or(bad("partial width is not 1..255"))?;
                (n, w as u16)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let elems: Vec<&str> = index_part.split('/').collect();
        let mut index: u64 = 0;
        for (i, e) in elems.iter().enumerate() {
            let digits = if i + 1 < elems.len() {
                e.strip_prefix('x')
                    .ok_or(bad("inner index element without x"))?
            } else {
                e
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("index element is not 3 digits"));
            }
            let g: u64 = digits.parse().map_err(|_| bad("index element"))?;
            index = index
                .checked_mul(1000)
                .and_then(|n| n.checked_add(g))
                .ok_or(bad("index too large"))?;
        }
        let tile = Self { kind, index, width };
        if tile.path() != path {
            return Err(bad("index not in canonical form"));
        }
        Ok(tile)
    }

    /// The path after `tile/`.
    pub fn path(&self) -> String {
        let level = match self.kind {
            TileKind::Hash(l) => l.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let mut p = format!("{level}/{}", encode_index(self.index));
        if !self.is_full() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Whether this is a full tile (immutable for ever).
    pub fn is_full(&self) -> bool {
        u64::from(self.width) == TILE_WIDTH
    }

    /// The tree level its hashes are at (entry bundles: the leaves).
    fn tree_level(&self) -> u8 {
        match self.kind {
            TileKind::Hash(l) => l.saturating_mul(TILE_HEIGHT),
            TileKind::Entries => 0,
        }
    }

    /// The first stored-node index (at [`Self::tree_level`]) it covers.
    fn first(&self) -> Option<u64> {
        self.index.checked_mul(TILE_WIDTH)
    }

    /// Whether a tree of `size` leaves holds everything this tile covers
    /// (otherwise it does not exist yet: 404).
    pub fn within(&self, size: u64) -> bool {
        let level = match self.kind {
            TileKind::Hash(l) if l > MAX_TILE_LEVEL => return false,
            TileKind::Hash(l) => l,
            TileKind::Entries => 0,
        };
        let Some(end) = self
            .first()
            .and_then(|f| f.checked_add(u64::from(self.width)))
        else {
            return false;
        };
        // end · 256^level leaves, without overflow.
        let shift = u32::from(level) * u32::from(TILE_HEIGHT);
        end <= (size.min(MAX_TREE_SIZE) >> shift)
    }

    /// The hash tile's bytes from stored hashes (`W` × 32 bytes). The caller
    /// checked [`Self::within`] the tree size it serves.
    pub fn hashes<S: NodeSource>(&self, src: &S) -> Result<Vec<u8>, S::Error> {
        let mut out = Vec::with_capacity(usize::from(self.width) * 32);
        let first = self.first().unwrap_or(0);
        for i in 0..u64::from(self.width) {
            out.extend_from_slice(&src.node(self.tree_level(), first + i)?);
        }
        Ok(out)
    }

    /// The range of entry indices an entry bundle covers.
    pub fn entry_range(&self) -> std::ops::Range<u64> {
        let first = self.first().unwrap_or(0);
        first..first + u64::from(self.width)
    }
}

/// Why an entry bundle cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    /// An entry is longer than a uint16 length can say.
    #[error("log entry of {0} bytes does not fit an entry bundle")]
    TooLong(usize),
    /// The bytes are not a sequence of length-prefixed entries.
    #[error("malformed entry bundle")]
    Malformed,
}

/// An entry bundle: each entry as a big-endian uint16 length and its bytes.
pub fn encode_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    for e in entries {
        let e = e.as_ref();
        let len = u16::try_from(e.len()).map_err(|_| BundleError::TooLong(e.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// The entries of a bundle (at most [`TILE_WIDTH`]).
pub fn decode_bundle(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if out.len() as u64 == TILE_WIDTH || bytes.len() < 2 {
            return Err(BundleError::Malformed);
        }
        let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        let rest = &bytes[2..];
        if rest.len() < len {
            return Err(BundleError::Malformed);
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(out)
}

/// The hash tiles a client needs to compute the tree head of, and any
/// inclusion or consistency proof within, the tree of `size` leaves: at
/// each level the full tiles and the partial one (tlog-tiles §Partial
/// Tiles: width `floor(size / 256^L) mod 256`).
pub fn tiles_for_size(size: u64) -> Vec<Tile> {
    let mut out = Vec::new();
    let mut n = size.min(MAX_TREE_SIZE);
    let mut level = 0u8;
    while n > 0 {
        for index in 0..n / TILE_WIDTH {
            out.push(Tile {
                kind: TileKind::Hash(level),
                index,
                width: TILE_WIDTH as u16,
            });
        }
        let w = n % TILE_WIDTH;
        if w > 0 {
            out.push(Tile {
                kind: TileKind::Hash(level),
                index: n / TILE_WIDTH,
                width: w as u16,
            });
        }
        n /= TILE_WIDTH;
        level += 1;
    }
    out
}

/// Why a client's tile set cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TileSetError {
    /// A fetched tile does not have the size its path says.
    #[error("tile {0} has {1} bytes")]
    BadLength(String, usize),
    /// A hash the computation needs is in no tile held.
    #[error("no tile holds node ({0}, {1})")]
    Missing(u8, u64),
}

/// Hash tiles fetched by a client, as a [`NodeSource`]: a node at tree
/// level `8·L + k` is rehashed from the `2^k` tile hashes below it in the
/// level-`L` tile. Nothing here is trusted until a tree head computed from
/// it matches a verified checkpoint.
#[derive(Debug, Default, Clone)]
pub struct TileSet {
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

impl TileSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fetched hash tile (a wider tile of the same position replaces
    /// a narrower one). Entry bundles are not hash tiles and are refused.
    pub fn insert(&mut self, tile: &Tile, bytes: &[u8]) -> Result<(), TileSetError> {
        let TileKind::Hash(level) = tile.kind else {
            return Err(TileSetError::BadLength(tile.path(), bytes.len()));
        };
        if bytes.len() != usize::from(tile.width) * 32 {
            return Err(TileSetError::BadLength(tile.path(), bytes.len()));
        }
        let hashes: Vec<Hash> = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let slot = self.tiles.entry((level, tile.index)).or_default();
        if hashes.len() > slot.len() {
            *slot = hashes;
        }
        Ok(())
    }
}

impl NodeSource for TileSet {
    type Error = TileSetError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, TileSetError> {
        let tile_level = level / TILE_HEIGHT;
        let k = level % TILE_HEIGHT;
        // The node's span in tile-level hashes, all inside one tile.
        let start = index << k;
        let count = 1u64 << k;
        let tile_index = start / TILE_WIDTH;
        let offset = (start % TILE_WIDTH) as usize;
        let missing = TileSetError::Missing(level, index);
        let hashes = self
            .tiles
            .get(&(tile_level, tile_index))
            .ok_or(missing.clone())?;
        let span = hashes.get(offset..offset + count as usize).ok_or(missing)?;
        let mut row = span.to_vec();
        while row.len() > 1 {
            row = row
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
        }
        Ok(row[0])
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{inclusion_proof, root, verify_inclusion, MemoryTree};
    use super::*;

    #[test]
    fn paths_follow_the_spec() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        assert_eq!(encode_index(1000), "x001/000");
        for (path, kind, index, width) in [
            ("0/000", TileKind::Hash(0), 0, 256),
            ("1/x001/x234/067", TileKind::Hash(1), 1234067, 256),
            ("0/005.p/7", TileKind::Hash(0), 5, 7),
            ("entries/x001/000.p/255", TileKind::Entries, 1000, 255),
            ("63/000", TileKind::Hash(63), 0, 256),
        ] {
            let t = Tile::parse(path).unwrap();
            assert_eq!((t.kind, t.index, t.width), (kind, index, width), "{path}");
            assert_eq!(t.path(), path);
        }
        for bad in [
            "",
            "0",
            "0/",
            "64/000",
            "01/000",
            "-1/000",
            "0/5",
            "0/0005",
            "0/x000/005",
            "0/001/002",
            "0/x001",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "0/000.p/",
            "0/000.p/1/2",
            "0/000/",
            "entries/000.p/x",
            "leaves/000",
            "0/x1844/x674/x407/x370/x955/x161/615",
            "0/x018/x446/x744/x073/x709/x551/616",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad:?}");
        }
        // The largest u64 index still parses (it is simply never within).
        let t = Tile::parse("0/x018/x446/x744/x073/x709/x551/615").unwrap();
        assert_eq!(t.index, u64::MAX);
        assert!(!t.within(MAX_TREE_SIZE));
    }

    #[test]
    fn within_follows_the_tree() {
        let t = |kind, index, width| Tile { kind, index, width };
        let h0 = TileKind::Hash(0);
        let h1 = TileKind::Hash(1);
        assert!(!t(h0, 0, 1).within(0));
        assert!(t(h0, 0, 1).within(1));
        assert!(!t(h0, 0, 256).within(255));
        assert!(t(h0, 0, 256).within(256));
        assert!(t(h1, 0, 1).within(256));
        assert!(!t(h1, 0, 2).within(511));
        assert!(t(h1, 0, 2).within(512));
        assert!(!t(TileKind::Hash(8), 0, 1).within(MAX_TREE_SIZE));
        assert!(t(TileKind::Hash(7), 0, 1).within(1 << 56));
        // The spec's example: 70,000 leaves.
        let tiles = tiles_for_size(70_000);
        let level = |l| tiles.iter().filter(move |t| t.kind == TileKind::Hash(l));
        assert_eq!(level(0).filter(|t| t.is_full()).count(), 273);
        assert_eq!(level(0).find(|t| !t.is_full()).unwrap().width, 112);
        assert_eq!(level(1).filter(|t| t.is_full()).count(), 1);
        assert_eq!(level(1).find(|t| !t.is_full()).unwrap().width, 17);
        assert_eq!(level(2).map(|t| t.width).collect::<Vec<_>>(), vec![1]);
        assert!(tiles.iter().all(|t| t.within(70_000)));
        assert!(tiles_for_size(0).is_empty());
    }

    #[test]
    fn tiles_rebuild_heads_and_proofs() {
        let mut tree = MemoryTree::new();
        for size in 1..=600u64 {
            tree.push_entry(&size.to_be_bytes());
            if !(size < 20 || size % 97 == 0 || [255, 256, 257, 511, 512, 513].contains(&size)) {
                continue;
            }
            let mut set = TileSet::new();
            for tile in tiles_for_size(size) {
                set.insert(&tile, &tile.hashes(&tree).unwrap()).unwrap();
            }
            let head = root(&tree, size).unwrap();
            assert_eq!(root(&set, size).unwrap(), head, "size {size}");
            for i in [0, size / 2, size - 1] {
                let p = inclusion_proof(&set, i, size).unwrap();
                assert_eq!(p, inclusion_proof(&tree, i, size).unwrap());
                verify_inclusion(
                    &super::super::leaf_hash(&(i + 1).to_be_bytes()),
                    i,
                    size,
                    &p,
                    &head,
                )
                .unwrap();
            }
        }
        let mut set = TileSet::new();
        let tile = Tile::parse("0/000.p/3").unwrap();
        assert!(set.insert(&tile, &[0; 95]).is_err());
        assert!(root(&set, 3).is_err());
    }

    #[test]
    fn bundles_round_trip() {
        let entries = vec![vec![], vec![1, 2, 3], vec![7; 300]];
        let b = encode_bundle(&entries).unwrap();
        assert_eq!(&b[..2], &[0, 0]);
        assert_eq!(&b[2..4], &[0, 3]);
        assert_eq!(decode_bundle(&b).unwrap(), entries);
        assert!(decode_bundle(&b[..b.len() - 1]).is_err());
        assert!(decode_bundle(&[0]).is_err());
        assert_eq!(
            encode_bundle(&[vec![0; 65536]]),
            Err(BundleError::TooLong(65536))
        );
    }
}
