"""The pool tests answer with the same fake Gemini server as the reply tests."""

from tests.bots.conftest import fake_gemini  # noqa: F401  (a fixture)
