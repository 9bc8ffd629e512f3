"""align's extensions of trl's trainers: small subclasses for what trl does not have, each
pinned by tests on the trl internals it uses (tests/test_dynamic_sampling.py)."""
