"""``python -m captioner.build.photos OUT_DIR``: build the real-photo set (see ``captioner.build.photos``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioner.build.imagenet import wordnet
from captioner.build.photos.assemble import assemble, check_target, write
from captioner.build.photos.gcompris import RCC_DIR, gcompris_photos
from captioner.build.photos.packages import package_photos
from captioner.build.photos.readme import readme
from captioner.core.errors import CaptionerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner.build.photos", description=__doc__)
    parser.add_argument("out", type=Path, help="folder to write (created; a set written before is replaced)")
    parser.add_argument("--gcompris", type=Path, default=RCC_DIR, help=f"GCompris's resource folder (default {RCC_DIR})")
    args = parser.parse_args(argv)
    try:
        check_target(args.out.resolve())
        net = wordnet()
        built = assemble(gcompris_photos(args.gcompris) + package_photos(), net)
        write(built, args.out, net, readme)
    except CaptionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(built.entries)} photos (manifest.jsonl, captions_train.json, "
          "captions_heldout.json, README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
