from vtibgp.core.model import OpKind

def pack_run(ops: list[object], start: int, stop: int, seq_base: int, del_base: int,
             budget: int, add: OpKind, replace: OpKind, delete: OpKind, fallback: bool,
             vias: dict[int, tuple[object, list[bytes | None]]], del4: bytes,
             del6: bytes) -> tuple[bytes, int, int]: ...

def send_order(ops: list[object], min_run: int,
               nbuckets: int) -> bool | tuple[bytes, list[object]] | None: ...
