"""Recorded episodes looked at (Rerun), re-run offline against a bundle, and re-executed on an arm."""
