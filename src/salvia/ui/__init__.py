"""Studio, the web console: server-rendered pages over the public API, served at `/studio`."""

from salvia.ui.api import StudioApi
from salvia.ui.app import create_studio
from salvia.ui.signin import SignIn

__all__ = ["SignIn", "StudioApi", "create_studio"]
