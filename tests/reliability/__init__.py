"""Fault tests (issue 3): nothing lost when parts of the stack are killed under load."""
