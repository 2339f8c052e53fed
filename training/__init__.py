"""Code that made the shipped models; not installed with the runtime package."""
