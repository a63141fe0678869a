"""``python -m hierparse.data [OUT.png]``: save a contact sheet of synthetic samples (image | label)."""

import sys
from pathlib import Path

from PIL import Image

from hierparse.data.synthetic import SyntheticParsing, contact_sheet

output = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic_samples.png")
Image.fromarray(contact_sheet(SyntheticParsing(n=16, size=128, seed=0))).save(output)
print(f"wrote {output}")
