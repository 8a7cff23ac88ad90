"""Re-encode the flowers photos for the GPU machine: shorter side ~224 px, JPEG, class folders kept.

The device machine takes at most 64 MiB per transfer, so the 3,670 photos travel as a smaller
re-encoded copy. Results measured on this copy must say so.

    python benchmarks/gpu/reencode.py /work/shared/data/flower_photos .gpu_data/flowers224   # 48.8 MiB at quality 75
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

SUFFIXES = {".jpg", ".jpeg", ".png"}


def reencode(src: Path, dst: Path, short_side: int, quality: int) -> int:
    """Write ``src`` shrunk so its shorter side is ``short_side`` (never enlarged) as JPEG; return its byte size."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = short_side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality, optimize=True)
    return dst.stat().st_size


def photos(root: Path) -> list[Path]:
    """Every photo under ``root``'s class folders, sorted."""
    found = sorted(p for p in root.glob("*/*") if p.suffix.lower() in SUFFIXES)
    if not found:
        raise SystemExit(f"{root}: no photos found in class folders")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--short-side", type=int, default=224)
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    srcs = photos(args.src)
    dsts = [args.dst / p.parent.name / (p.stem + ".jpg") for p in srcs]
    with ProcessPoolExecutor(args.workers) as pool:
        sizes = list(pool.map(reencode, srcs, dsts, [args.short_side] * len(srcs), [args.quality] * len(srcs),
                              chunksize=64))
    print(f"{len(sizes)} photos -> {args.dst}: {sum(sizes) / 2**20:.1f} MiB "
          f"(shorter side {args.short_side} px, JPEG quality {args.quality})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
