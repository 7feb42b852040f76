"""The service's settings: :class:`custody.settings.Settings` (``CUSTODY_*``), which the
broker's command line reads too; here for the web app's callers."""

from custody.settings import Settings

__all__ = ["Settings"]
