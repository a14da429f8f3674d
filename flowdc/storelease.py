"""The lease object that keeps other runs out of an output on an object store (flowdc.leases says
how leases are taken, renewed and taken over; flowdc.conditional, how each store writes one only if
unchanged)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from flowdc.conditional import Conflict, ObjectSlot, Versioned, slot_for
from flowdc.leases import ACQUIRE_TRIES, LEASE_FILE, Holder, OutputHold, in_use
from flowdc.storage import Destination

log = logging.getLogger(__name__)
UNSURE_WRITES = 4  # heartbeats in a row whose answers were lost, any of which may have landed


class StoreLease(OutputHold):
    """A lease object renewed by a heartbeat thread until release()."""

    def __init__(self, dest: Destination, run_id: str, ttl_s: float,
                 on_lost: Callable[[str], None] | None = None, slot: ObjectSlot | None = None):
        self.dest = dest
        self.slot = slot or slot_for(dest, LEASE_FILE)
        self.describe = f"lease _flowdc/lease.json (conditional writes: {self.slot.kind})"
        self.me = Holder.me(run_id, ttl_s)
        self.on_lost = on_lost
        # What the latest heartbeats wrote, answered or not: a write whose answer a reset lost may
        # have landed, and the next one, made with the version before it, then reads as a conflict.
        self._written: list[bytes] = []
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

    def _ours(self, current: Versioned) -> bool:
        """The lease object holds one of our own latest heartbeats, byte for byte (a run that took
        it over, even one of the same run id, wrote its own start and pid)."""
        return current.data in self._written

    @staticmethod
    def _expired(holder: Holder) -> bool:
        return time.time() - holder.heartbeat > holder.ttl_s

    def _beat(self) -> None:
        interval = max(self.me.ttl_s / 3.0, 0.05)
        while not self._stop.wait(interval):
            try:
                taken_by = self._renew()
            except Exception as exc:  # the store is unreachable for now: the next beat tries again
                log.debug("lease heartbeat on %s failed: %s", self.dest.display, exc)
                continue
            if taken_by is not None:
                message = f"lost the lease on {self.dest.display} (now held by {taken_by}); stopping"
                log.error("%s", message)
                if self.on_lost is not None:
                    self.on_lost(message)
                return

    def _renew(self) -> str | None:
        """One heartbeat; who holds the lease now when it is no longer ours."""
        self.me.heartbeat = time.time()
        data = self.me.to_bytes()
        self._written = [*self._written[-(UNSURE_WRITES - 1):], data]
        try:
            self.version = self.slot.replace(data, self.version)
        except Conflict:
            current = self.slot.read()
            if current is None or not self._ours(current):
                holder = Holder.parse(current.data) if current else None
                return holder.describe() if holder else "nobody"
            data, self.version = current.data, current.version  # our own write landed: renew from it
        self._written = [data]
        return None

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._delete()
        except Exception as exc:
            # Left behind, it expires after ttl_s. Not a warning: the store is unreachable, so the run
            # already ends with the one-line error that says so (or a rerun's takeover settles it).
            log.info("could not release the lease on %s (it expires by itself): %s", self.dest.display, exc)

    def _delete(self) -> None:
        try:
            self.slot.delete(self.version)
        except Conflict:
            current = self.slot.read()
            if current is not None and self._ours(current):  # else taken over meanwhile: not ours to delete
                with contextlib.suppress(Conflict):  # taken over just now
                    self.slot.delete(current.version)
