//! Consistency proofs from the association's tiles (C2SP `tlog-tiles`),
//! fetched over HTTPS from `<association URL>/log/`: only the few hash
//! tiles a proof touches (O(log n), at most 8 KiB each), never the whole
//! tree. Nothing fetched is trusted: the path it yields is judged against
//! the signed checkpoints ([`super::evidence::judge`]).

use super::{Leaf, ProofSource};
use crate::association::AssociationLink;
use crate::node::BoxFuture;
use caliopen_tlog::tiles::{decode_bundle, TileSetError, TILE_HEIGHT, TILE_WIDTH};
use caliopen_tlog::{
    consistency_proof, inclusion_proof, root, Hash, ProveError, Tile, TileKind, TileSet,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::codegen::http;
use tonic::transport::Channel;

/// Largest body read for a checkpoint (notes are far smaller).
const MAX_CHECKPOINT_BODY: usize = 64 * 1024;

/// Most tiles fetched for one proof: two per tile level and a few more is
/// all a proof needs; this bounds a misbehaving server.
const MAX_TILES_PER_PROOF: usize = 64;

/// Bytes of full tiles kept in memory. Full tiles never change, so a
/// member that checks many peers' certificates fetches each once: the
/// level-0 hash tiles and entry bundles of a log of 10,000 entries are
/// about 40 × (8 KiB + ~300 KiB).
const TILE_CACHE_BYTES: usize = 16 << 20;

/// Largest log entry a member reads in an entry bundle: a member
/// certificate is under 2 KiB, and this bounds a full bundle to 4 MiB.
const MAX_ENTRY_LEN: usize = 16 * 1024;

/// Full tiles already fetched (immutable, so never stale). Emptied when it
/// outgrows [`TILE_CACHE_BYTES`].
#[derive(Debug, Default)]
struct TileCache {
    tiles: HashMap<Tile, Arc<Vec<u8>>>,
    bytes: usize,
}

/// The association's log over HTTPS, through the link's TLS settings (the
/// service certificate must chain to the association root).
#[derive(Debug, Clone)]
pub struct HttpsTiles {
    link: AssociationLink,
    channel: Arc<tokio::sync::Mutex<Option<Channel>>>,
    cache: Arc<Mutex<TileCache>>,
}

/// The entry bundle of a tree of `size` leaves that holds entry `index`.
pub(crate) fn bundle_for(index: u64, size: u64) -> Tile {
    let n = index / TILE_WIDTH;
    Tile {
        kind: TileKind::Entries,
        index: n,
        width: (size - n * TILE_WIDTH).min(TILE_WIDTH) as u16,
    }
}

/// The inclusion proof of `index` in the tree of `size` leaves from the
/// tiles in `set`, or the node a tile is missing for.
fn inclusion_path_from(
    set: &TileSet,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, Option<(u8, u64)>> {
    inclusion_proof(set, index, size).map_err(|e| match e {
        ProveError::Source(TileSetError::Missing(l, i)) => Some((l, i)),
        _ => None,
    })
}

/// The hash tile of a tree of `size` leaves that holds complete subtree
/// `(level, index)` (which lies within that tree).
pub(crate) fn tile_for(level: u8, index: u64, size: u64) -> Tile {
    let tile_level = level / TILE_HEIGHT;
    let start = index << (level % TILE_HEIGHT);
    let n = start / TILE_WIDTH;
    let at_level = size >> (u32::from(tile_level) * u32::from(TILE_HEIGHT));
    let width = (at_level - n * TILE_WIDTH).min(TILE_WIDTH);
    Tile {
        kind: TileKind::Hash(tile_level),
        index: n,
        width: width as u16,
    }
}

/// The prefix path from `old` to `new` (see [`super::evidence`]) from the
/// tiles in `set`, or the node a tile is missing for.
fn prefix_path_from(set: &TileSet, old: u64, new: u64) -> Result<Vec<Hash>, Option<(u8, u64)>> {
    let missing = |e: TileSetError| match e {
        TileSetError::Missing(l, i) => Some((l, i)),
        TileSetError::BadLength(..) => None,
    };
    let mut p = consistency_proof(set, old, new).map_err(|e| match e {
        ProveError::Source(e) => missing(e),
        ProveError::Invalid(_) => None,
    })?;
    if old.is_power_of_two() {
        p.insert(0, root(set, old).map_err(missing)?);
    }
    Ok(p)
}

impl HttpsTiles {
    /// Tiles from the association `link` names.
    pub fn new(link: &AssociationLink) -> Self {
        Self {
            link: link.clone(),
            channel: Arc::default(),
            cache: Arc::default(),
        }
    }

    fn cached(&self, tile: &Tile) -> Option<Arc<Vec<u8>>> {
        let c = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.tiles.get(tile).cloned()
    }

    /// `tile`'s bytes: from the cache when it is full and was fetched
    /// before, else from the association (at most `limit` bytes).
    async fn tile(&self, tile: &Tile, limit: usize) -> Result<Arc<Vec<u8>>, String> {
        if let Some(b) = self.cached(tile) {
            return Ok(b);
        }
        let path = format!("{}tile/{}", caliopen_tlog::tiles::LOG_PREFIX, tile.path());
        let bytes = Arc::new(self.get(&path, limit).await?);
        if tile.is_full() {
            let mut c = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if c.bytes + bytes.len() > TILE_CACHE_BYTES {
                c.tiles.clear();
                c.bytes = 0;
            }
            c.bytes += bytes.len();
            c.tiles.insert(*tile, bytes.clone());
        }
        Ok(bytes)
    }

    /// Entry `index` of the tree of `size` leaves and its inclusion proof,
    /// from that tree's entry bundle and hash tiles. Nothing is trusted:
    /// [`super::inclusion::judge`] checks both against a verified root.
    pub async fn fetch_leaf(&self, index: u64, size: u64) -> Result<Leaf, String> {
        if index >= size {
            return Err(format!("entry {index} is not below the tree size {size}"));
        }
        let bundle = bundle_for(index, size);
        let limit = usize::from(bundle.width) * (2 + MAX_ENTRY_LEN);
        let bytes = self.tile(&bundle, limit).await?;
        let entries = decode_bundle(&bytes).map_err(|e| format!("{}: {e}", bundle.path()))?;
        if entries.len() != usize::from(bundle.width) {
            return Err(format!(
                "{}: {} entries, not {}",
                bundle.path(),
                entries.len(),
                bundle.width
            ));
        }
        let entry = entries[(index % TILE_WIDTH) as usize].clone();
        let mut set = TileSet::new();
        for _ in 0..MAX_TILES_PER_PROOF {
            match inclusion_path_from(&set, index, size) {
                Ok(p) => return Ok((entry, p)),
                Err(None) => return Err(format!("no inclusion proof of {index} in {size}")),
                Err(Some((level, i))) => {
                    let tile = tile_for(level, i, size);
                    let bytes = self.tile(&tile, usize::from(tile.width) * 32).await?;
                    set.insert(&tile, &bytes)
                        .map_err(|e| format!("{}: {e}", tile.path()))?;
                }
            }
        }
        Err(format!(
            "inclusion proof of {index} in {size} needs more than {MAX_TILES_PER_PROOF} tiles"
        ))
    }

    async fn channel(&self) -> Result<Channel, String> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.link.channel(None).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// `GET <path>` on the association's listener; the body when 200.
    pub async fn get(&self, path: &str, limit: usize) -> Result<Vec<u8>, String> {
        let r = tokio::time::timeout(self.link.timeout, self.get_inner(path, limit))
            .await
            .unwrap_or_else(|_| Err(format!("GET {path}: timed out")));
        if r.is_err() {
            // Reconnect next time (the cached channel may be broken).
            *self.channel.lock().await = None;
        }
        r
    }

    async fn get_inner(&self, path: &str, limit: usize) -> Result<Vec<u8>, String> {
        use std::pin::Pin;
        use tonic::codegen::{Body as _, Service};
        let mut ch = self.channel().await?;
        let req = http::Request::get(path)
            .body(tonic::body::Body::empty())
            .map_err(|e| format!("GET {path}: {e}"))?;
        std::future::poll_fn(|cx| Service::poll_ready(&mut ch, cx))
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let resp = Service::call(&mut ch, req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("GET {path}: HTTP {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| format!("GET {path}: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(format!("GET {path}: body over {limit} bytes"));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// The prefix path from `old` to `new` leaves, from the tiles of the
    /// tree of `new` leaves.
    pub async fn fetch_prefix_path(&self, old: u64, new: u64) -> Result<Vec<Hash>, String> {
        let mut set = TileSet::new();
        for _ in 0..MAX_TILES_PER_PROOF {
            match prefix_path_from(&set, old, new) {
                Ok(p) => return Ok(p),
                Err(None) => return Err(format!("no proof from {old} to {new}")),
                Err(Some((level, index))) => {
                    let tile = tile_for(level, index, new);
                    let bytes = self.tile(&tile, usize::from(tile.width) * 32).await?;
                    set.insert(&tile, &bytes)
                        .map_err(|e| format!("{}: {e}", tile.path()))?;
                }
            }
        }
        Err(format!(
            "proof from {old} to {new} needs more than {MAX_TILES_PER_PROOF} tiles"
        ))
    }
}

impl ProofSource for HttpsTiles {
    fn invalidate(&self) {
        let mut c = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.tiles.clear();
        c.bytes = 0;
    }

    fn prefix_path(&self, old: u64, new: u64) -> BoxFuture<Result<Vec<Hash>, String>> {
        let me = self.clone();
        Box::pin(async move { me.fetch_prefix_path(old, new).await })
    }

    fn leaf(&self, index: u64, size: u64) -> BoxFuture<Result<Leaf, String>> {
        let me = self.clone();
        Box::pin(async move { me.fetch_leaf(index, size).await })
    }

    fn checkpoint(&self) -> BoxFuture<Result<String, String>> {
        let me = self.clone();
        Box::pin(async move {
            let path = format!("{}checkpoint", caliopen_tlog::tiles::LOG_PREFIX);
            let body = me.get(&path, MAX_CHECKPOINT_BODY).await?;
            String::from_utf8(body).map_err(|_| format!("GET {path}: not UTF-8"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caliopen_tlog::MemoryTree;

    #[test]
    fn the_tiles_a_proof_asks_for_are_enough() {
        let mut tree = MemoryTree::new();
        for i in 0..700u64 {
            tree.push_entry(&i.to_be_bytes());
        }
        for (old, new) in [
            (1, 2),
            (3, 700),
            (256, 700),
            (255, 257),
            (512, 513),
            (600, 699),
        ] {
            let mut set = TileSet::new();
            let mut fetched = 0;
            let p = loop {
                match prefix_path_from(&set, old, new) {
                    Ok(p) => break p,
                    Err(Some((l, i))) => {
                        let t = tile_for(l, i, new);
                        assert!(t.within(new), "{old} {new} {t:?}");
                        set.insert(&t, &t.hashes(&tree).unwrap()).unwrap();
                        fetched += 1;
                        assert!(fetched < 10, "{old} {new}");
                    }
                    Err(None) => panic!("{old} {new}"),
                }
            };
            assert_eq!(
                super::super::evidence::judge(old, &tree.root_at(old), new, &tree.root_at(new), &p),
                super::super::evidence::PathVerdict::Consistent
            );
        }
    }
}
