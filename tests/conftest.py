import os
import sys

# Tests import helpers from tests/support.py and the package from this checkout.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
