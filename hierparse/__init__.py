"""hierparse: coarse-to-fine image parsing with stacked networks driven by YAML class trees."""

from hierparse import data, metrics, ops
from hierparse.hierarchy import Hierarchy, HierarchyError, load_hierarchy
from hierparse.losses import HierarchicalLoss
from hierparse.models import build_model
from hierparse.parser import Parse, Parser

__version__ = "0.1.0"
__all__ = ["HierarchicalLoss", "Hierarchy", "HierarchyError", "Parse", "Parser", "build_model", "data", "load_hierarchy",
           "metrics", "ops"]
