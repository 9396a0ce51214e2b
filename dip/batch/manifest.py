"""The batch's manifest (``OUTDIR/manifest.jsonl``) and summary (``OUTDIR/summary.csv``).

The manifest has one JSON object per line, one line per attempt at an image (finished, failed or
interrupted; images skipped because they were done are not attempts). Only the coordinating
process writes it, appending a line and flushing it to disk as each attempt ends, so a batch
killed at any point leaves a valid manifest of what it completed. ``attempt`` counts the
image's lines over all runs of the batch into the same folder.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dip.files import atomic_write

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ("image", "status", "mode", "attempt", "exit_code", "steps", "psnr", "seconds", "output", "error")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The records of the manifest at ``path`` (empty when missing); a torn last line (a
    writer killed mid-write) is skipped with a warning."""
    records: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return records
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s line %d is not JSON; skipped", path, number)
    return records


class Manifest:
    """Appends attempt records to ``OUTDIR/manifest.jsonl``, one flushed line each.

    Args:
        outdir: the batch's output folder.
    """

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / MANIFEST_NAME
        self._attempts: dict[str, int] = {}
        for record in read_manifest(self.path):
            key = record.get("image")
            if key:
                self._attempts[key] = self._attempts.get(key, 0) + 1

    def attempts(self, image: str) -> int:
        """How many attempts at ``image`` (its absolute path) the manifest holds."""
        return self._attempts.get(image, 0)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Number the attempt (``attempt``: 1 for the image's first), append it, flush it to
        disk; returns the record with ``attempt`` set."""
        image = record["image"]
        self._attempts[image] = self._attempts.get(image, 0) + 1
        record = dict(record, attempt=self._attempts[image])
        line = json.dumps(record, sort_keys=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return record


def write_summary_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (``SUMMARY_FIELDS``) as CSV (UTF-8, ``\\r\\n`` line ends), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_FIELDS})
    atomic_write(path, buf.getvalue())


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """A plain-text table of the batch: image, status, steps, PSNR (dB), seconds, output."""
    header = ("image", "status", "steps", "psnr", "seconds", "output")
    body = []
    for row in rows:
        psnr = row.get("psnr")
        secs = row.get("seconds")
        status = row.get("status", "")
        if row.get("mode") == "resume" and status != "skipped":
            status += " (resumed)"
        body.append((Path(row.get("image", "")).name, status,
                     "" if row.get("steps") is None else str(row["steps"]),
                     "" if psnr is None else f"{float(psnr):.2f}",
                     "" if secs is None else f"{float(secs):.1f}",
                     row.get("output") or ""))
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)
