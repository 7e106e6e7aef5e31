"""Durable storage for the batch API: uploaded files, batch objects, append-only results.

Layout under `root` (one directory per service; `$QUORUM_HOME/batches` by default):

    files/<file_id>.jsonl        the bytes as uploaded (or written: outputs, errors)
    files/<file_id>.json         OpenAI's file object
    batches/<batch_id>.json      OpenAI's batch object (status, counts, file ids)
    batches/<batch_id>.results.jsonl   one line per finished request, appended and fsync'ed
                                 as it finishes, keyed by custom_id

JSON objects are replaced atomically (write to a temporary file, then rename), so a crash leaves
the old or the new version, never half of one. A results line that a crash cut short is ignored
on reading (its request runs again); every complete line is a request that never runs again.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from experts.errors import QuorumError

__all__ = ["BatchStore", "NotFoundError"]


class NotFoundError(QuorumError):
    """A file or batch id that does not exist."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


# The ids this store hands out ("file-" / "batch_" + 24 hex digits) and nothing the filesystem could
# trip on: an id of over 255 bytes made stat() fail with "File name too long" (a 500, found by the fuzz).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class BatchStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.batches = self.root / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------------

    def create_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        (self.files / f"{file_id}.jsonl").write_bytes(content)
        meta = {"id": file_id, "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed"}  # fmt: skip
        _write_json(self.files / f"{file_id}.json", meta)
        return meta

    def get_file(self, file_id: str) -> dict[str, Any]:
        path = self.files / f"{Path(file_id).name}.json"
        if not _ID.fullmatch(file_id) or not path.is_file():
            raise NotFoundError(f"no file with id '{file_id}'; list them with GET /v1/files",
                                param="file_id")  # fmt: skip
        return json.loads(path.read_text())

    def file_content(self, file_id: str) -> bytes:
        self.get_file(file_id)
        return (self.files / f"{Path(file_id).name}.jsonl").read_bytes()

    def list_files(self) -> list[dict[str, Any]]:
        metas = [json.loads(p.read_text()) for p in self.files.glob("*.json")]
        return sorted(metas, key=lambda m: m["created_at"], reverse=True)

    def delete_file(self, file_id: str) -> dict[str, Any]:
        self.get_file(file_id)
        for suffix in (".json", ".jsonl"):
            (self.files / f"{Path(file_id).name}{suffix}").unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -------------------------------------------------------------------------------

    def save_batch(self, batch: dict[str, Any]) -> None:
        with self._lock:
            _write_json(self.batches / f"{batch['id']}.json", batch)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        path = self.batches / f"{Path(batch_id).name}.json"
        if not _ID.fullmatch(batch_id) or not path.is_file():
            raise NotFoundError(f"no batch with id '{batch_id}'; list them with GET /v1/batches",
                                param="batch_id")  # fmt: skip
        return json.loads(path.read_text())

    def list_batches(self) -> list[dict[str, Any]]:
        batches = [json.loads(p.read_text()) for p in self.batches.glob("*.json")]
        return sorted(batches, key=lambda b: b["created_at"], reverse=True)

    def append_result(self, batch_id: str, record: dict[str, Any]) -> None:
        """Append one finished request durably (flushed and fsync'ed before returning)."""
        line = json.dumps(record) + "\n"
        path = self.batches / f"{batch_id}.results.jsonl"
        with self._lock, open(path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a crash tore the last line: start a fresh one
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def read_results(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """Finished requests by custom_id (the first record wins; a torn last line is skipped)."""
        path = self.batches / f"{batch_id}.results.jsonl"
        out: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return out
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.setdefault(record["custom_id"], record)
        return out
