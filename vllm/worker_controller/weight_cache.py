# SPDX-License-Identifier: Apache-2.0
"""Host-RAM weight cache: copies of recently used checkpoints in shared memory.

A pool serves many checkpoints of few architectures, and a swap or load
spends most of its weight phase reading files. The controller copies each
checkpoint it loaded (its safetensors files) into ``/dev/shm`` within a
budget (``--weight-cache-gb``), least recently used out first; every pooled
worker maps the same pages and pins them with CUDA
(``worker/host_cache.py``), so a later load of that checkpoint copies at
PCIe speed, with one copy in RAM however many workers use it.

Entries are filled in the background after a load from disk (or ahead of
time: ``admit``), so no request waits for the copy. An entry that is
evicted while a worker still maps it stays in memory until that worker lets
go (tmpfs frees a file's pages with its last mapping).
"""

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from vllm.logger import init_logger
from vllm.worker_controller.worker.host_cache import ORIGIN_FILE

logger = init_logger(__name__)

_INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(model: str) -> list[Path]:
    """The safetensors files a load of local checkpoint ``model`` reads
    (those its index names, else all); empty if it has none."""
    root = Path(model)
    if not root.is_dir():
        return []
    index = root / _INDEX_FILE
    if index.is_file():
        names = set(json.loads(index.read_text())["weight_map"].values())
        return sorted(root / name for name in names)
    return sorted(root.glob("*.safetensors"))


class WeightCache:
    """Checkpoint copies in shared memory, LRU within ``budget_bytes``."""

    def __init__(
        self,
        budget_bytes: int,
        on_admit: Callable[[str], None] = lambda entry: None,
        on_evict: Callable[[str], None] = lambda entry: None,
        root: str = "/dev/shm",
    ):
        self.budget_bytes = budget_bytes
        self._on_admit = on_admit
        self._on_evict = on_evict
        self._dir = Path(tempfile.mkdtemp(prefix="vllm-wc-weights-", dir=root))
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Path, int]] = OrderedDict()
        """Real checkpoint path -> (entry directory, bytes), oldest first."""
        self._filling: set[str] = set()

    def lookup(self, model: str) -> str | None:
        """The entry holding ``model``'s weights, if cached (marks it used)."""
        key = os.path.realpath(model)
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return str(self._entries[key][0])

    def admit_in_background(self, model: str) -> None:
        """Copies ``model`` into the cache off the caller's thread, unless
        it is cached, being copied, or not a local safetensors checkpoint."""
        key = os.path.realpath(model)
        with self._lock:
            if key in self._entries or key in self._filling:
                return
            self._filling.add(key)
        threading.Thread(
            target=self._admit, args=(key,), name="WCWeightCache", daemon=True
        ).start()

    def admit(self, model: str) -> str | None:
        """Copies ``model`` into the cache now; the entry, or None if it
        does not fit or has no safetensors files."""
        key = os.path.realpath(model)
        with self._lock:
            self._filling.add(key)
        return self._admit(key)

    def _admit(self, key: str) -> str | None:
        try:
            files = checkpoint_files(key)
            size = sum(f.stat().st_size for f in files)
            if not files or size > self.budget_bytes:
                if files:
                    logger.info(
                        "Not caching %s in host RAM: %.2f GiB exceed the "
                        "weight cache (%.2f GiB)",
                        key,
                        size / 2**30,
                        self.budget_bytes / 2**30,
                    )
                return None
            self._make_room(size)
            if shutil.disk_usage(self._dir).free < size:
                logger.warning(
                    "Not caching %s: %s has %.2f GiB free, %.2f GiB needed",
                    key,
                    self._dir.parent,
                    shutil.disk_usage(self._dir).free / 2**30,
                    size / 2**30,
                )
                return None
            entry = self._copy(key, files)
            with self._lock:
                self._entries[key] = (entry, size)
            logger.info("Cached %s in host RAM (%.2f GiB)", key, size / 2**30)
            self._on_admit(str(entry))
            return str(entry)
        except OSError as e:
            logger.warning("Caching %s in host RAM failed: %s", key, e)
            return None
        finally:
            with self._lock:
                self._filling.discard(key)

    def _copy(self, key: str, files: list[Path]) -> Path:
        """Copies the files into a new entry, published by one rename (a
        reader never sees a partial entry)."""
        name = hashlib.sha256(key.encode()).hexdigest()[:16]
        partial = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=self._dir))
        try:
            for f in files:
                shutil.copyfile(f, partial / f.name)
            (partial / ORIGIN_FILE).write_text(key)
            entry = self._dir / name
            shutil.rmtree(entry, ignore_errors=True)
            partial.rename(entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return entry

    def _make_room(self, size: int) -> None:
        while True:
            with self._lock:
                used = sum(nbytes for _, nbytes in self._entries.values())
                if used + size <= self.budget_bytes or not self._entries:
                    return
                key, (entry, _) = self._entries.popitem(last=False)
            logger.info("Evicting %s from the host weight cache", key)
            self._on_evict(str(entry))
            shutil.rmtree(entry, ignore_errors=True)

    def entries(self) -> list[dict]:
        with self._lock:
            return [
                {"model": key, "bytes": nbytes}
                for key, (_, nbytes) in reversed(self._entries.items())
            ]

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
