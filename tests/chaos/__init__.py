"""Chaos tests (issue 7): a shard, Redis, PostgreSQL or Gemini taken away for a while, and what users notice."""
