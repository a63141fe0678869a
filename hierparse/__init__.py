"""hierparse: coarse-to-fine image parsing with stacked networks driven by YAML class trees."""

from hierparse import data, metrics
from hierparse.hierarchy import Hierarchy, HierarchyError, load_hierarchy
from hierparse.models import build_model

__version__ = "0.1.0"
__all__ = ["Hierarchy", "HierarchyError", "build_model", "data", "load_hierarchy", "metrics"]
