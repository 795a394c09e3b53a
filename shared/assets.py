"""``python -m shared.assets`` moved: its commands are ``python -m fixtures`` and ``python -m downloads``."""

import sys

NEW = {"tiny": "fixtures tiny", "sample-data": "fixtures sample-data", "fetch": "downloads fetch", "cc12m": "downloads cc12m"}

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    new = NEW.get(command, "fixtures (tiny, sample-data) or python -m downloads (fetch, cc12m)")
    print(f"python -m shared.assets {command} moved: use python -m {new}".replace("  ", " "), file=sys.stderr)
    sys.exit(2)
