"""Where the real scans are: ``../shared/data`` beside the checkout, or
``XRAY_TEST_DATA`` (CI runs part of the suite once more with it pointing
nowhere, as on a clone without ``../shared``). Tests that need them skip
with the reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRAY_TEST_DATA") or ROOT.parent / "shared" / "data")
CHESTXRAY8 = SHARED / "chestxray8"
DAMAGED = SHARED / "damaged"
