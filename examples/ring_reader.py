#!/usr/bin/env python3
"""Read referdino's shared-memory mask ring (layout versions 1 and 2) with only mmap + struct (+ numpy if present).

usage: ring_reader.py RING [--frames N] [--timeout S] [--max-silence S]
  RING: a bare name (looked up in /dev/shm) or a path, as given to `referdino run --ring`.

Prints one line per new frame: commit number, frame id, tracks (`object#track:score`), and the mask's per-label pixel counts.
Between frames it watches the writer: a ring re-created at the same path (the runtime restarted) is
re-opened; a writer that closed ends the reader (exit 0); a writer whose heartbeat is older than
--max-silence (hung, or killed without closing) ends it with exit 2; no new frame within --timeout
while the writer lives (a silent camera) ends it with exit 1.
The layout is documented in src/output/ring.rs and the README.

Memory ordering: the protocol asks for an acquire fence between copying a slot and re-reading its
seq. Python has no fence; each read below is a separate call into the interpreter, which on x86-64
keeps loads in order anyway, and on aarch64 makes a reordering across them very unlikely but not
impossible. A reader that must never see a torn mask on ARM uses the Rust reader
(`referdino::output::ring::MaskRingReader`) or a C extension.
"""
import argparse
import mmap
import os
import struct
import sys
import time

try:
    import numpy as np
except ImportError:  # numpy is optional
    np = None

MAGIC = b"RDMASKR\0"
HEADER = struct.Struct("<8sIIIIIIIIQII")  # magic .. mask_format (56 bytes)
LIVENESS = struct.Struct("<QQI")  # heartbeat_ns, commit_ns, writer_state at offset 56 (0s: not recorded)
WRITER_LIVE, WRITER_CLOSED = 1, 2
SLOT_META = struct.Struct("<QQQII")  # seq, frame_id, timestamp_ns, n_tracks, flags
MAX_TRACKS = 16


class RingReader:
    def __init__(self, name):
        path = name if "/" in name else os.path.join("/dev/shm", name)
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            self.identity = (st.st_dev, st.st_ino)
            if st.st_size < HEADER.size:
                raise ValueError(f"{path}: {st.st_size} bytes, smaller than the header")
            self.mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        (magic, version, header_size, self.slots, self.slot_size, self.width, self.height,
         max_tracks, self.mask_offset, _wc, self.writer_pid, mask_format) = HEADER.unpack_from(self.mm, 0)
        if magic != MAGIC:
            raise ValueError(f"{path}: bad magic {magic!r}")
        if version not in (1, 2) or header_size != 128 or max_tracks != MAX_TRACKS or mask_format != 1:
            raise ValueError(f"{path}: unsupported ring (version {version}, mask format {mask_format})")
        # The geometry must describe this very file (a corrupt header must not index past it).
        expect_slot = -(-(448 + self.width * self.height) // 64) * 64
        if (self.slots < 2 or self.width == 0 or self.height == 0 or self.mask_offset != 448
                or self.slot_size != expect_slot or len(self.mm) < header_size + self.slots * self.slot_size):
            raise ValueError(f"{path}: inconsistent header ({self.slots} slots of {self.slot_size} bytes, "
                             f"mask {self.width}x{self.height}, file {len(self.mm)} bytes)")
        self.header_size = header_size

    def replaced(self):
        """Whether the path now names another file, or none (the writer re-created the ring)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    def liveness(self, max_silence):
        """'replaced', 'closed', 'silent', 'live', or 'unknown' (a writer that records no heartbeat)."""
        heartbeat, _commit_ns, state = LIVENESS.unpack_from(self.mm, 56)
        gone = False
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self.identity:
                return "replaced"
        except FileNotFoundError:
            gone = True
        if state == WRITER_CLOSED:
            return "closed"
        if gone:
            return "replaced"
        if state != WRITER_LIVE or heartbeat == 0:
            return "unknown"
        age = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - heartbeat) / 1e9
        return "silent" if age > max_silence else "live"

    def write_count(self):
        return struct.unpack_from("<Q", self.mm, 40)[0]

    def read(self, n):
        """Returns (frame_id, timestamp_ns, tracks, mask) for commit n, or None if it is not
        complete, was overwritten, or changed while being copied (seqlock check)."""
        base = self.header_size + (n % self.slots) * self.slot_size
        want = 2 * n + 2
        seq1, frame_id, ts, n_tracks, _flags = SLOT_META.unpack_from(self.mm, base)
        if seq1 != want:
            return None
        n_tracks = min(n_tracks, MAX_TRACKS)
        ids = struct.unpack_from(f"<{MAX_TRACKS}I", self.mm, base + 32)
        scores = struct.unpack_from(f"<{MAX_TRACKS}f", self.mm, base + 96)
        boxes = struct.unpack_from(f"<{4 * MAX_TRACKS}f", self.mm, base + 160)
        # version 2: the object each track belongs to (zeros in a version 1 file)
        objects = struct.unpack_from(f"<{MAX_TRACKS}H", self.mm, base + 416)
        start = base + self.mask_offset
        raw = self.mm[start:start + self.width * self.height]  # a copy
        seq2 = struct.unpack_from("<Q", self.mm, base)[0]
        if seq2 != seq1:
            return None  # torn: the writer reused the slot during the copy
        tracks = [(objects[i], ids[i], scores[i], boxes[4 * i:4 * i + 4]) for i in range(n_tracks)]
        if np is not None:
            mask = np.frombuffer(raw, dtype=np.uint8).reshape(self.height, self.width)
        else:
            mask = raw
        return frame_id, ts, tracks, mask


def label_counts(mask):
    if np is not None:
        labels, counts = np.unique(mask, return_counts=True)
        return {int(l): int(c) for l, c in zip(labels, counts) if l}
    counts = {}
    for b in mask:
        if b:
            counts[b] = counts.get(b, 0) + 1
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ring")
    ap.add_argument("--frames", type=int, default=0, help="stop after N frames (0 = forever)")
    ap.add_argument("--timeout", type=float, default=10.0, help="give up after S seconds without a new frame")
    ap.add_argument("--max-silence", type=float, default=2.0,
                    help="a writer without a heartbeat for S seconds is taken as dead (exit 2)")
    args = ap.parse_args()
    r = RingReader(args.ring)
    print(f"ring {args.ring}: {r.slots} slots, mask {r.width}x{r.height}, writer pid {r.writer_pid}", file=sys.stderr)
    last = -1
    seen = 0
    idle_since = time.monotonic()
    checked = 0.0
    while args.frames == 0 or seen < args.frames:
        count = r.write_count()
        if count == 0 or count - 1 == last:
            now = time.monotonic()
            if now - checked > 0.1:  # a stat and a header read, ten times a second while idle
                checked = now
                state = r.liveness(args.max_silence)
                if state == "replaced":
                    try:
                        r = RingReader(args.ring)
                    except (OSError, ValueError):
                        time.sleep(0.05)  # not there yet, or its magic not written yet
                        continue
                    print(f"ring re-created (writer pid {r.writer_pid}): re-opened", file=sys.stderr)
                    last = -1
                    continue
                if state == "closed":
                    print("the writer closed the ring", file=sys.stderr)
                    return 0
                if state == "silent":
                    print(f"no heartbeat from writer pid {r.writer_pid} for over {args.max_silence} s "
                          "(hung, or killed without closing)", file=sys.stderr)
                    return 2
            if now - idle_since > args.timeout:
                print("no new frame within the timeout", file=sys.stderr)
                return 1
            time.sleep(0.002)
            continue
        got = r.read(count - 1)
        if got is None:
            continue  # being rewritten; try the next newest
        frame_id, ts, tracks, mask = got
        last = count - 1
        seen += 1
        idle_since = time.monotonic()
        desc = " ".join(f"{obj}#{tid}:{score:.2f}" for obj, tid, score, _ in tracks)
        print(f"commit {last} frame {frame_id} t={ts / 1e9:.3f}s tracks [{desc}] pixels {label_counts(mask)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
