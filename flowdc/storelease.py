"""The lease object that keeps other runs out of an output on an object store (flowdc.leases says
how leases are taken, renewed and taken over; flowdc.conditional, how each store writes one only if
unchanged)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flowdc.conditional import Conflict, ObjectSlot, slot_for
from flowdc.leases import ACQUIRE_TRIES, LEASE_FILE, Holder, OutputHold, in_use
from flowdc.storage import Destination

log = logging.getLogger(__name__)


class StoreLease(OutputHold):
    """A lease object renewed by a heartbeat thread until release()."""

    def __init__(self, dest: Destination, run_id: str, ttl_s: float,
                 on_lost: Callable[[str], None] | None = None, slot: ObjectSlot | None = None):
        self.dest = dest
        self.slot = slot or slot_for(dest, LEASE_FILE)
        self.describe = f"lease _flowdc/lease.json (conditional writes: {self.slot.kind})"
        self.me = Holder.me(run_id, ttl_s)
        self.on_lost = on_lost
        self.version = self._acquire()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="flowdc-lease", daemon=True)
        self._thread.start()

    def _acquire(self) -> str:
        for _ in range(ACQUIRE_TRIES):
            current = self.slot.read()
            try:
                if current is None:
                    return self.slot.create(self.me.to_bytes())
                holder = Holder.parse(current.data)
                gone = holder is not None and holder.gone()
                if holder is not None and holder.run_id != self.me.run_id and not self._expired(holder) and not gone:
                    raise in_use(self.dest.display, holder,
                                 f"; its lease expires {holder.ttl_s:g} s after its last heartbeat")
                if holder is not None:
                    why = ("same run id" if holder.run_id == self.me.run_id else
                           "its process is gone" if gone else "heartbeat stopped")
                    log.warning("taking over the lease of %s on %s (%s)", holder.describe(), self.dest.display, why)
                return self.slot.replace(self.me.to_bytes(), current.version)
            except Conflict:
                continue  # someone changed it between our read and write: look again
        raise in_use(self.dest.display, None, " (its lease changed under every attempt to take it)")

    @staticmethod
    def _expired(holder: Holder) -> bool:
        return time.time() - holder.heartbeat > holder.ttl_s

    def _beat(self) -> None:
        interval = max(self.me.ttl_s / 3.0, 0.05)
        while not self._stop.wait(interval):
            self.me.heartbeat = time.time()
            try:
                self.version = self.slot.replace(self.me.to_bytes(), self.version)
            except Conflict:
                current = self.slot.read()
                holder = Holder.parse(current.data) if current else None
                who = holder.describe() if holder else "nobody"
                message = f"lost the lease on {self.dest.display} (now held by {who}); stopping"
                log.error("%s", message)
                if self.on_lost is not None:
                    self.on_lost(message)
                return
            except Exception as exc:  # the store is unreachable for now: the next beat tries again
                log.debug("lease heartbeat on %s failed: %s", self.dest.display, exc)

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.slot.delete(self.version)
        except Conflict:
            pass  # taken over meanwhile: not ours to delete
        except Exception as exc:
            # Left behind, it expires after ttl_s. Not a warning: the store is unreachable, so the run
            # already ends with the one-line error that says so (or a rerun's takeover settles it).
            log.info("could not release the lease on %s (it expires by itself): %s", self.dest.display, exc)
