"""Plumbing every layer may use: atomic writes, crash files, logs, exit codes and errors,
the label tables."""
