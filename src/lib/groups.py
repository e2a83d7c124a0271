"""Which images belong together and must stay in one split: identical pixels, near-duplicates
by perceptual hash, and slices of one patient (DICOM PatientID, or a groups file). `prepare`
splits unsplit data, removes leakage and defines the leak-free test part by these groups, and
the bootstrap resamples them, not images."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import imagehash
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from src.lib.errors import UserError

HASH_BITS = 64  # imagehash.phash's default: an 8x8 DCT


def perceptual_hash(im: Image.Image) -> int:
    """imagehash's pHash of the decoded image as a 64-bit integer: the signs of the lowest 8x8
    DCT frequencies of a 32x32 grayscale copy against their median. Re-encoding, a change of
    brightness or contrast and a shift of a few pixels move few of its bits."""
    return int(str(imagehash.phash(im)), 16)


def dicom_patient(path: Path) -> str | None:
    """The patient a DICOM slice belongs to: its PatientID, else its StudyInstanceUID."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return None
    return str(ds.get("PatientID") or ds.get("StudyInstanceUID") or "") or None


def read_groups_file(path: Path) -> dict[str, str]:
    """A CSV with columns `file` (as the data report names files: relative to the data root)
    and `group` (a patient, a study, anything whose images must stay together)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read it as a CSV file ({e})") from None
    if rows and not {"file", "group"} <= set(rows[0]):
        raise UserError(f"{path}: expected the columns file,group; found "
                        f"{','.join(rows[0])}")
    return {r["file"]: r["group"] for r in rows if r["group"]}


def near_pairs(hashes: list[int], distance: int) -> list[tuple[int, int, int]]:
    """(i, j, d) for every pair of hashes at most `distance` bits apart. Multi-index hashing:
    split into distance + 1 chunks, two hashes that close agree on at least one chunk
    (pigeonhole), so only hashes sharing a chunk are compared, not all pairs."""
    chunks = distance + 1
    width = -(-HASH_BITS // chunks)
    found = {}
    for c in range(chunks):
        buckets = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> (c * width)) & ((1 << width) - 1)].append(i)
        for members in buckets.values():
            for a, i in enumerate(members):
                for j in members[a + 1:]:
                    d = (hashes[i] ^ hashes[j]).bit_count()
                    if d <= distance:
                        found[i, j] = d
    return sorted((i, j, d) for (i, j), d in found.items())


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def group_records(records: list[dict], *, distance: int, groups: dict[str, str]) -> dict:
    """Sets each record's "group" (an integer, the same for images that must stay together)
    and returns what joined them: identical pixels, pHash within `distance` bits (not
    identical), the same patient (record "patient", from DICOM) or the same entry of `groups`
    (file name -> group)."""
    joined = UnionFind(len(records))
    by_key = defaultdict(list)
    for i, r in enumerate(records):
        by_key["pixels", r["pixels"]].append(i)
        patient = groups.get(r["file"].name) or r.get("patient")
        if patient is not None:
            by_key["patient", patient].append(i)
    for members in by_key.values():
        for i in members[1:]:
            joined.union(members[0], i)
    near = [(i, j, d) for i, j, d in near_pairs([r["phash"] for r in records], distance)
            if records[i]["pixels"] != records[j]["pixels"]]
    for i, j, _ in near:
        joined.union(i, j)
    roots = {}
    for i, r in enumerate(records):
        r["group"] = roots.setdefault(joined.find(i), len(roots))
    return {"groups": len(roots), "near_duplicate_pairs": near,
            "patients": len({k for k in by_key if k[0] == "patient"})}

