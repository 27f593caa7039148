"""--import-mode=importlib does not put test dirs on sys.path; the tests import lora_tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
