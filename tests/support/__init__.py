"""Test support code: factories and waiting helpers."""
