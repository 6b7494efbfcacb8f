"""Static files storage."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's hashed, compressed storage once collectstatic has written its manifest.

    Before that (the test suite, a local run with DEBUG=0) the strict manifest storage
    raises on every `{% static %}` and every page answers 500; plain names are served
    from the finders instead (WHITENOISE_USE_FINDERS).
    """

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:
            return name
        return super().stored_name(name)
