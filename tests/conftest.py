import sys
from pathlib import Path

# Shared test helpers live in tests/helpers/.
sys.path.insert(0, str(Path(__file__).parent))
