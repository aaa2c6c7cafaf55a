"""Where the shared data sets live: $VDMCODEC_DATA, else ../shared/data beside the project."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("VDMCODEC_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
KODAK = SHARED_DATA / "kodak"
