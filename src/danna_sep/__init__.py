"""danna-sep: split a song into drums, bass, other and vocals."""

from .models import SOURCES

__version__ = "0.1.0"

__all__ = ["SOURCES", "__version__"]
