"""The Adj-RIB-In: every path held, per peer and prefix, after import policy.

`tables[peer][prefix]` is the peer's path that competes for the prefix. With ADD-PATH a
peer may hold several paths of one prefix (by path identifier, in `path_ids`); the table
then holds the best of them, since they all go through that peer's tunnel. Knows nothing
of tunnels, best paths across peers or the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping

from vtibgp.core.model import Family, PathAttrs, PeerAddr, Prefix

DEFAULT_LOCAL_PREF = 100


class AdjRibIn:
    def __init__(self) -> None:
        self.tables: dict[PeerAddr, dict[Prefix, PathAttrs]] = {}
        self.path_ids: dict[PeerAddr, dict[Prefix, dict[int, PathAttrs]]] = {}
        self.eor_seen: dict[PeerAddr, set[Family]] = {}  # End-of-RIB received, per peer

    def count(self, peer: PeerAddr) -> int:
        return len(self.tables.get(peer, ()))

    def holds(self, prefix: Prefix) -> bool:
        """Whether any peer holds a path of `prefix`."""
        return any(prefix in paths for paths in self.tables.values())

    def prefixes(self) -> set[Prefix]:
        return {p for paths in self.tables.values() for p in paths}

    def has_add_path(self, peer: PeerAddr) -> bool:
        return bool(self.path_ids.get(peer))

    def store(self, peer: PeerAddr, paths: dict[Prefix, PathAttrs], prefix: Prefix,
              attrs: PathAttrs, pid: int | None) -> None:
        """Hold `attrs` as `peer`'s path of `prefix` with ADD-PATH identifier `pid` (None: the
        only path, replacing all); the table entry becomes the best of the peer's paths.
        `paths` is the peer's table (looked up once by the caller)."""
        if pid is None:
            paths[prefix] = attrs
            ids = self.path_ids.get(peer)
            if ids:
                ids.pop(prefix, None)
            return
        per = self.path_ids.setdefault(peer, {}).setdefault(prefix, {})
        per[pid] = attrs
        paths[prefix] = best_own(per)

    def drop(self, peer: PeerAddr, prefix: Prefix, pid: int | None) -> bool:
        """Forget `peer`'s path `pid` of `prefix` (None: all of them). True if the peer's
        table entry for the prefix changed (another of its paths is now its best) or went."""
        paths = self.tables.get(peer)
        if paths is None:
            return False
        ids = self.path_ids.get(peer, {})
        per = ids.get(prefix)
        if pid is None or per is None:
            ids.pop(prefix, None)
            return paths.pop(prefix, None) is not None
        before = paths.get(prefix)
        if per.pop(pid, None) is None:
            return False
        if per:
            paths[prefix] = best_own(per)
            return paths[prefix] is not before
        del ids[prefix]
        paths.pop(prefix, None)
        return True

    def held_paths(self, peer: PeerAddr, prefix: Prefix) -> list[tuple[int | None, PathAttrs]]:
        """Every path `peer` holds of `prefix`, as (path identifier or None, attributes)."""
        ids = self.path_ids.get(peer, {})
        return [*ids.get(prefix, {}).items()] or [(None, self.tables[peer][prefix])]

    def forget(self, peer: PeerAddr) -> dict[Prefix, PathAttrs] | None:
        """Everything held from `peer` goes (its session ended, or it is no longer
        configured); returns its table."""
        self.eor_seen.pop(peer, None)
        self.path_ids.pop(peer, None)
        return self.tables.pop(peer, None)


def best_own(paths: Mapping[int, PathAttrs]) -> PathAttrs:
    """The best of one peer's ADD-PATH paths of a prefix (LOCAL_PREF, AS path, origin, MED,
    then the lower path identifier): only it competes with other peers' paths, through the
    same tunnel as the others would."""
    return min(paths.items(), key=lambda kv: (
        -(kv[1].local_pref if kv[1].local_pref is not None else DEFAULT_LOCAL_PREF),
        kv[1].as_path_len, kv[1].origin, kv[1].med or 0, kv[0]))[1]
