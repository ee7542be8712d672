//! The id mapping of an idmapped mount, as uid_map/gid_map ranges. Pure.
//!
//! For a process in the initial user namespace (every process of a rootful container), an
//! idmapped mount translates ids in both directions: a file stored with host id H shows as
//! the container id that maps to H, and a file created by container id C is stored as the
//! host id C maps to. asme's mapping for a container id C and an owner O is:
//!
//! | container id | stored on disk as | why |
//! |---|---|---|
//! | C | O | what the container user writes is the owner's; the owner's files show as C's |
//! | any other x except 0 and O | x | other container users (a daemon at 999) keep their ids |
//! | 0, when C is not 0 | unmapped: writes fail (EOVERFLOW) | host root must never be produced |
//! | O, when O is not C | unmapped | host id O is taken by C |
//!
//! Nothing maps onto host id 0, so no process in the container can create a host-root-owned
//! file, let alone a setuid-root one; host-root files show as 65534 (the overflow id) inside.

use std::fmt;

/// The highest valid id: 4294967295 is (uid_t)-1, "no id".
pub const MAX_ID: u32 = u32::MAX - 1;

/// `count` container ids from `container` are stored on disk as ids from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub count: u32,
}

/// A set of non-overlapping ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("the owner cannot be root: an idmapped mount never stores files as host root")]
    OwnerIsRoot,
    #[error("invalid id {0}: ids go up to 4294967294")]
    InvalidId(u32),
}

impl IdMap {
    /// The mapping that stores what container id `container` writes as `owner` (see the
    /// module table).
    pub fn for_owner(container: u32, owner: u32) -> Result<IdMap, IdMapError> {
        if owner == 0 {
            return Err(IdMapError::OwnerIsRoot);
        }
        for id in [container, owner] {
            if id > MAX_ID {
                return Err(IdMapError::InvalidId(id));
            }
        }
        let mut ranges = vec![IdRange {
            container,
            host: owner,
            count: 1,
        }];
        // Identity over 1..=MAX_ID, with holes at the container id and the owner.
        let mut holes = [container, owner];
        holes.sort_unstable();
        let mut start = 1u32;
        for hole in holes.into_iter().chain([MAX_ID + 1]) {
            if hole > start {
                ranges.push(IdRange {
                    container: start,
                    host: start,
                    count: hole - start,
                });
            }
            start = start.max(hole.saturating_add(1));
        }
        ranges.sort_by_key(|r| r.container);
        Ok(IdMap { ranges })
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// The id a file created by container id `id` is stored as, if `id` is mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|r| id >= r.container && id - r.container < r.count)
            .map(|r| r.host + (id - r.container))
    }

    /// The id a file stored as host id `id` shows as in the container, if any maps to it.
    pub fn from_host(&self, id: u32) -> Option<u32> {
        self.ranges
            .iter()
            .find(|r| id >= r.host && id - r.host < r.count)
            .map(|r| r.container + (id - r.host))
    }
}

/// The uid_map/gid_map text of the user namespace that carries this mapping for an
/// idmapped mount. The columns read "stored-id caller-id count": the kernel translates the
/// caller's id through the namespace's outside column to find the id it stores, and shows a
/// stored id as its outside id (`mnt_idmapping.c`, `make_vfsuid`/`from_vfsuid`).
impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.ranges {
            writeln!(f, "{} {} {}", r.host, r.container, r.count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges must not overlap on either side (the kernel refuses), and never store 0 or
    /// 4294967295.
    fn check_invariants(map: &IdMap) {
        let mut inside: Vec<_> = map
            .ranges()
            .iter()
            .map(|r| (r.container, r.count))
            .collect();
        let mut outside: Vec<_> = map.ranges().iter().map(|r| (r.host, r.count)).collect();
        for v in [&mut inside, &mut outside] {
            v.sort();
            for w in v.windows(2) {
                assert!(
                    u64::from(w[0].0) + u64::from(w[0].1) <= u64::from(w[1].0),
                    "overlap {map}"
                );
            }
        }
        for r in map.ranges() {
            assert!(r.count > 0);
            assert!(r.host > 0, "maps onto host root: {map}");
            assert!(
                u64::from(r.host) + u64::from(r.count) - 1 <= u64::from(MAX_ID),
                "{map}"
            );
            assert!(
                u64::from(r.container) + u64::from(r.count) - 1 <= u64::from(MAX_ID),
                "{map}"
            );
        }
    }

    #[test]
    fn root_container_for_owner_1234() {
        let map = IdMap::for_owner(0, 1234).unwrap();
        // Kernel columns: stored id, container id, count.
        assert_eq!(
            map.to_string(),
            "1234 0 1\n1 1 1233\n1235 1235 4294966060\n"
        );
        check_invariants(&map);
        let cases: &[(u32, Option<u32>)] = &[
            (0, Some(1234)),
            (1, Some(1)),
            (999, Some(999)),
            (1233, Some(1233)),
            (1234, None),
            (MAX_ID, Some(MAX_ID)),
        ];
        for (inside, host) in cases {
            assert_eq!(map.to_host(*inside), *host, "inside {inside}");
        }
        assert_eq!(map.from_host(1234), Some(0));
        assert_eq!(map.from_host(0), None, "host root shows as the overflow id");
        assert_eq!(map.from_host(999), Some(999));
    }

    #[test]
    fn image_user_1000_for_owner_1234() {
        let map = IdMap::for_owner(1000, 1234).unwrap();
        check_invariants(&map);
        assert_eq!(map.to_host(1000), Some(1234));
        assert_eq!(
            map.to_host(0),
            None,
            "root inside must not become host root"
        );
        assert_eq!(map.to_host(1234), None);
        assert_eq!(map.from_host(1000), None, "host 1000 has no inside id left");
        assert_eq!(map.from_host(1234), Some(1000));
        assert_eq!(map.to_host(1001), Some(1001));
    }

    #[test]
    fn same_container_and_owner() {
        let map = IdMap::for_owner(1000, 1000).unwrap();
        check_invariants(&map);
        assert_eq!(
            map.to_string(),
            "1 1 999\n1000 1000 1\n1001 1001 4294966294\n"
        );
        assert_eq!(map.to_host(0), None);
    }

    #[test]
    fn edges_and_refusals() {
        for (c, o) in [
            (0, 1),
            (0, MAX_ID),
            (MAX_ID, 1),
            (1, 2),
            (2, 1),
            (5, MAX_ID),
        ] {
            let map = IdMap::for_owner(c, o).unwrap();
            check_invariants(&map);
            assert_eq!(map.to_host(c), Some(o), "{c}->{o}: {map}");
            for id in [0, 1, 2, 3, 5, 1000, MAX_ID - 1, MAX_ID] {
                assert_ne!(map.to_host(id), Some(0), "{id} maps to root in {map}");
            }
        }
        assert_eq!(IdMap::for_owner(0, 0), Err(IdMapError::OwnerIsRoot));
        assert_eq!(
            IdMap::for_owner(u32::MAX, 5),
            Err(IdMapError::InvalidId(u32::MAX))
        );
        assert_eq!(
            IdMap::for_owner(5, u32::MAX),
            Err(IdMapError::InvalidId(u32::MAX))
        );
    }
}
