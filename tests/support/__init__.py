"""Reusable test support: real local servers and helpers shared by the test suites."""
