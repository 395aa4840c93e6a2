"""Studio, the web console: server-rendered pages over the public API, served at `/studio`."""

from salvia.ui.api import StudioApi
from salvia.ui.app import create_studio

__all__ = ["StudioApi", "create_studio"]
