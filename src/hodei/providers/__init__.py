"""Worker providers: where workers run."""

from hodei.providers.process import ProcessProvider

__all__ = ["ProcessProvider"]
